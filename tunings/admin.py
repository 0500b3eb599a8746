"""Operator console for files and jobs.

Job rows are read-only here: the API and the workers own them, and every change an
operator makes (cancel, retry, priority) is an admin action that calls the same service
the API uses, so the guards and the ``JobEvent`` trail are identical. The actions are
gated by a custom "operate" permission (granted by ``tunings.change_tuningjob``) so the
change page can stay view-only.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from lora_engine.distributed import DistributedSpec
from tuninglab.admin_base import ReadOnlyInline, ReadOnlyModelAdmin
from tuninglab.charts import line_chart_svg
from tuninglab.errors import ConflictError
from tunings.models import Checkpoint, JobEvent, TrainingFile, TuningJob
from tunings.selectors.curves import job_curve_points
from tunings.services.retry import RETRYABLE, tuning_job_retry, tuning_job_set_priority
from tunings.services.state import tuning_job_cancel

EVENTS_SHOWN = 50
VALIDATION_ERRORS_SHOWN = 100


class LatestEventsFormSet(BaseInlineFormSet):
    """Only the newest ``EVENTS_SHOWN`` message events, oldest first (a long run logs thousands).

    Metrics events (one per step) are drawn as the curves above, not listed as raw JSON rows:
    listing them made a job's page thousands of pixels tall.
    """

    def get_queryset(self) -> QuerySet:
        if not hasattr(self, "_latest_events"):
            base = super().get_queryset().filter(type=JobEvent.Type.MESSAGE)
            newest = list(base.order_by("-seq").values_list("pk", flat=True)[:EVENTS_SHOWN])
            self._latest_events = base.filter(pk__in=newest).order_by("seq")
        return self._latest_events


class JobEventInline(ReadOnlyInline):
    model = JobEvent
    formset = LatestEventsFormSet
    fields = ["created_at", "level", "message", "data"]
    verbose_name_plural = f"events (newest {EVENTS_SHOWN} messages, oldest first; metrics are the curves above)"
    classes = ["collapse"]


class CheckpointInline(ReadOnlyInline):
    model = Checkpoint
    fields = ["step", "path", "metrics", "created_at"]


class PriorityForm(forms.Form):
    priority = forms.IntegerField(min_value=-1000, max_value=1000, help_text="Higher runs first; the default is 0.")


@admin.register(TuningJob)
class TuningJobAdmin(ReadOnlyModelAdmin):
    # Rows are written by services only: the page is view-only, deletion is off; cancel,
    # retry and priority are the buttons below, guarded by has_operate_permission.
    list_display = [
        "id",
        "owner",
        "base_model",
        "method",
        "status",
        "progress_display",
        "current_loss",
        "attempt",
        "priority",
        "created_at",
    ]
    list_filter = ["status", "base_model", ("owner", admin.RelatedOnlyFieldListFilter), "method", "queue"]
    search_fields = ["id", "suffix", "owner__username", "fine_tuned_model"]
    list_select_related = ["owner", "base_model"]
    date_hierarchy = "created_at"
    inlines = [CheckpointInline, JobEventInline]
    actions = ["cancel_jobs", "retry_jobs", "change_priority"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "id",
                    "owner",
                    "job_page_link",
                    "status",
                    "cancel_requested",
                    "fine_tuned_model",
                    "error_display",
                ]
            },
        ),
        ("Curves", {"fields": ["curves_display"]}),
        (
            "Request",
            {
                "fields": [
                    "base_model",
                    "training_file",
                    "validation_file",
                    "method",
                    "lora_rank",
                    "lora_alpha",
                    "lora_dropout",
                    "target_modules",
                    "hyperparameters",
                    "resolved_hyperparameters",
                    "seed",
                    "suffix",
                    "metadata",
                ]
            },
        ),
        (
            "Progress",
            {
                "fields": [
                    "progress",
                    "current_step",
                    "total_steps",
                    "current_loss",
                    "eval_loss",
                    "learning_rate",
                    "tokens_per_second",
                    "eta_seconds",
                    "trained_tokens",
                ]
            },
        ),
        (
            "Distributed",
            {
                "classes": ["collapse"],
                "fields": ["distributed_display", "memory_estimate_display", "launch_config_display"],
            },
        ),
        (
            "Execution",
            {
                "classes": ["collapse"],
                "fields": [
                    "priority",
                    "queue",
                    "resources",
                    "attempt",
                    "max_attempts",
                    "fencing_token",
                    "lease_owner",
                    "lease_until",
                    "created_at",
                    "updated_at",
                    "started_at",
                    "finished_at",
                ],
            },
        ),
    ]

    @admin.display(description="progress", ordering="progress")
    def progress_display(self, obj: TuningJob) -> str:
        return f"{obj.progress:.0f}%"

    @admin.display(description="job page")
    def job_page_link(self, obj: TuningJob) -> str:
        # The page is the owner's (owner-scoped like the API): other users, staff included, get a 404.
        url = reverse("webui:job-detail", args=[obj.pk])
        return format_html('<a href="{}">{}</a> (visible to its owner only)', url, url)

    @admin.display(description="loss and learning rate")
    def curves_display(self, obj: TuningJob) -> str:
        curves = job_curve_points(job=obj)
        loss = line_chart_svg(
            {"train": curves["train"], "eval": curves["eval"]}, title="Loss", x_label="step", y_label="loss"
        )
        lr = line_chart_svg({"lr": curves["lr"]}, title="Learning rate", x_label="step", y_label="lr", height=200)
        # line_chart_svg escapes every text it writes (titles, series names); the numbers are floats.
        return mark_safe(f'<div class="job-curves">{loss}{lr}</div>')  # noqa: S308

    @admin.display(description="distributed spec")
    def distributed_display(self, obj: TuningJob) -> str:
        """The full spec, defaults filled in ({} on the row is one process)."""
        spec = DistributedSpec.from_dict(obj.distributed or None)
        return format_html(
            "<p>{} on {} process(es) ({} launcher)</p><pre>{}</pre>",
            spec.strategy,
            spec.world_size,
            spec.launcher,
            json.dumps(spec.to_dict(), indent=2, sort_keys=True),
        )

    @admin.display(description="memory preflight (per rank)")
    def memory_estimate_display(self, obj: TuningJob) -> str:
        """The create-time estimate of one rank's memory, by part, and what it was checked against."""
        estimate = obj.memory_estimate or {}
        if not estimate:
            return "- (no estimate: the base model's config.json was unreadable at create time)"
        return format_html(
            "<p>{}</p><pre>{}</pre>",
            estimate.get("summary", ""),
            json.dumps(estimate, indent=2, sort_keys=True),
        )

    @admin.display(description="launch of the latest attempt")
    def launch_config_display(self, obj: TuningJob) -> str:
        """What the worker started: the command line, extra environment, the generated DeepSpeed JSON."""
        launch = obj.launch_config or {}
        if not launch:
            return "- (not launched yet)"
        ds = launch.get("deepspeed_config")
        return format_html(
            "<p>{} launcher, world size {}</p><p>Command (run in the job dir):</p><pre>{}</pre>"
            "<p>Extra environment:</p><pre>{}</pre>{}",
            launch.get("launcher", "?"),
            launch.get("world_size", "?"),
            shlex.join(str(a) for a in launch.get("argv") or []),
            json.dumps(launch.get("env") or {}, indent=2, sort_keys=True),
            format_html("<p>DeepSpeed config:</p><pre>{}</pre>", json.dumps(ds, indent=2, sort_keys=True))
            if ds is not None
            else "",
        )

    @admin.display(description="error")
    def error_display(self, obj: TuningJob) -> str:
        if not obj.error:
            return "-"
        err = obj.error
        return format_html(
            "<strong>{}</strong>: {}{}<br>{}",
            err.get("code", ""),
            err.get("message", ""),
            format_html(" (param: <code>{}</code>)", err["param"]) if err.get("param") else "",
            format_html("Suggestion: {}", obj.suggestion) if obj.suggestion else "",
        )

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """Who may cancel, retry and re-prioritise: holders of ``tunings.change_tuningjob``."""
        return request.user.has_perm("tunings.change_tuningjob")

    # --- buttons on the job page: the same services, one job -------------------------
    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path("<path:object_id>/cancel/", wrap(require_POST(self.cancel_view)), name="tunings_tuningjob_cancel"),
            path("<path:object_id>/retry/", wrap(require_POST(self.retry_view)), name="tunings_tuningjob_retry"),
            *super().get_urls(),
        ]

    def _job_for_button(self, request: HttpRequest, object_id: str) -> TuningJob:
        if not self.has_operate_permission(request):
            raise PermissionDenied
        return get_object_or_404(TuningJob, pk=object_id)

    def _back_to(self, job: TuningJob) -> HttpResponseRedirect:
        return HttpResponseRedirect(reverse("admin:tunings_tuningjob_change", args=[job.pk]))

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        job = self._job_for_button(request, object_id)
        self.cancel_jobs(request, TuningJob.objects.filter(pk=job.pk))
        return self._back_to(job)

    def retry_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        job = self._job_for_button(request, object_id)
        self.retry_jobs(request, TuningJob.objects.filter(pk=job.pk))
        return self._back_to(job)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        job = TuningJob.objects.filter(pk=object_id).only("status").first()
        extra_context = {
            **(extra_context or {}),
            "can_operate": self.has_operate_permission(request),
            "can_cancel": job is not None and not job.is_terminal,
            "can_retry": job is not None and job.status in RETRYABLE,
        }
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.action(description="Cancel selected jobs", permissions=["operate"])
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet) -> None:
        stopped, stopping, terminal = [], [], []
        for job in queryset:
            try:
                job = tuning_job_cancel(job=job, by=request.user)
            except ConflictError:
                terminal.append(f"{job.id} ({job.status})")
                continue
            (stopped if job.status == TuningJob.Status.CANCELLED else stopping).append(job.id)
        if stopped:
            self.message_user(request, f"Cancelled {len(stopped)} job(s).", messages.SUCCESS)
        if stopping:
            self.message_user(
                request,
                f"Cancellation requested for {len(stopping)} running job(s); they stop at the next step: "
                + ", ".join(stopping),
                messages.SUCCESS,
            )
        if terminal:
            self.message_user(
                request, f"{len(terminal)} job(s) were already finished: " + ", ".join(terminal), messages.WARNING
            )

    @admin.action(description="Retry selected failed/cancelled jobs (as new jobs)", permissions=["operate"])
    def retry_jobs(self, request: HttpRequest, queryset: QuerySet) -> None:
        created, skipped = [], []
        for job in queryset:
            if job.status not in RETRYABLE:
                skipped.append(f"{job.id} ({job.status})")
                continue
            try:
                new = tuning_job_retry(job=job, by=request.user)
            except ConflictError:  # changed state since the list was loaded
                skipped.append(f"{job.id} ({job.status})")
                continue
            created.append(f"{job.id} → {new.id}")
        if created:
            self.message_user(request, f"Retried {len(created)} job(s): " + ", ".join(created), messages.SUCCESS)
        if skipped:
            self.message_user(
                request,
                f"Skipped {len(skipped)} job(s) that are not failed or cancelled: " + ", ".join(skipped),
                messages.WARNING,
            )

    @admin.action(description="Change priority of selected jobs…", permissions=["operate"])
    def change_priority(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        form = PriorityForm(request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            priority = form.cleaned_data["priority"]
            changed, terminal = [], []
            for job in queryset:
                try:
                    tuning_job_set_priority(job=job, priority=priority, by=request.user)
                    changed.append(job.id)
                except ConflictError:
                    terminal.append(f"{job.id} ({job.status})")
            if changed:
                self.message_user(request, f"Set priority {priority} on {len(changed)} job(s).", messages.SUCCESS)
            if terminal:
                self.message_user(
                    request, f"{len(terminal)} finished job(s) left unchanged: " + ", ".join(terminal), messages.WARNING
                )
            return None  # back to the changelist
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Change job priority",
            "form": form,
            "jobs": queryset,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            "action": "change_priority",
        }
        return TemplateResponse(request, "admin/tunings/tuningjob/change_priority.html", context)


@admin.register(TrainingFile)
class TrainingFileAdmin(ReadOnlyModelAdmin):
    list_display = [
        "id",
        "owner",
        "filename",
        "format",
        "example_count",
        "token_estimate",
        "status",
        "bytes",
        "created_at",
    ]
    list_filter = ["status", "format", ("owner", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["id", "filename", "sha256", "owner__username"]
    list_select_related = ["owner"]
    fields = [
        "id",
        "owner",
        "filename",
        "purpose",
        "status",
        "format",
        "example_count",
        "token_estimate",
        "bytes",
        "sha256",
        "storage_path",
        "created_at",
        "validation_report",
        "statistics",
    ]

    @admin.display(description="statistics")
    def statistics(self, obj: TrainingFile) -> str:
        """The dataset stats stored on the row at upload (token lengths, roles, ...)."""
        stats = obj.stats
        if not stats:
            return "-"
        return format_html("<pre>{}</pre>", json.dumps(stats, indent=2, sort_keys=True))

    @admin.display(description="validation report")
    def validation_report(self, obj: TrainingFile) -> str:
        """The per-line problems as a table (line, code, field, message), capped for huge files."""
        errors = obj.validation_errors or []
        if not errors:
            return "No problems found." if obj.status == TrainingFile.Status.PROCESSED else "-"
        rows = []
        for err in errors[:VALIDATION_ERRORS_SHOWN]:
            if isinstance(err, dict):
                rows.append(
                    (
                        err.get("line", ""),
                        err.get("code", ""),
                        err.get("param") or err.get("field") or "",
                        err.get("message") or err.get("error") or "",
                    )
                )
            else:
                rows.append(("", "", "", str(err)))
        more = len(errors) - VALIDATION_ERRORS_SHOWN
        return format_html(
            "<table><thead><tr><th>line</th><th>code</th><th>field</th><th>message</th></tr></thead>"
            "<tbody>{}</tbody></table>{}",
            format_html_join("", "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>", rows),
            format_html("<p>… and {} more.</p>", more) if more > 0 else "",
        )
