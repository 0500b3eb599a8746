"""Playground pages: login required, every session scoped to its owner (another's is a 404).

* ``GET /playground/``: the user's sessions, newest first, and the new-chat form.
* ``POST /playground/sessions``: create a session, then go to it.
* ``GET /playground/sessions/<id>/``: the conversation (two columns side by side) and the prompt box.
* ``POST /playground/sessions/<id>/messages``: store the prompt, stream the answer(s) back as SSE
  (``playground.streaming``).
* ``POST /playground/sessions/<id>/delete``: delete the session.

State changes are POST only, behind Django's CSRF check (the page's script sends the token).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from playground.forms import ChatSessionForm
from playground.models import ChatSession
from playground.selectors import chat_model_choices, chat_session_get, chat_session_list, chat_transcript
from playground.services import MAX_PROMPT_CHARS, chat_session_create, chat_session_delete, chat_turn_start
from playground.streaming import ChatStream, GatewayCaller
from tuninglab.errors import ApiError, NotFoundError


def _owned_session(request: HttpRequest, session_id: str) -> ChatSession:
    try:
        return chat_session_get(owner=request.user, session_id=session_id)
    except NotFoundError as exc:
        raise Http404(exc.message) from exc


def _index(request: HttpRequest, form: ChatSessionForm, *, status: int = 200) -> HttpResponse:
    context = {
        "sessions": chat_session_list(owner=request.user),
        "form": form,
        "model_names": chat_model_choices(owner=request.user),
    }
    return render(request, "playground/index.html", context, status=status)


@login_required
@require_GET
def chat_session_index(request: HttpRequest) -> HttpResponse:
    return _index(request, ChatSessionForm())


@login_required
@require_POST
def chat_session_create_view(request: HttpRequest) -> HttpResponse:
    form = ChatSessionForm(request.POST)
    if not form.is_valid():
        return _index(request, form, status=400)
    try:
        session = chat_session_create(owner=request.user, **form.cleaned_data)
    except ApiError as exc:
        field = exc.param if exc.param in form.fields else None
        form.add_error(field, f"{exc.message} {exc.suggestion or ''}".strip())
        return _index(request, form, status=400)
    return redirect("playground:session", session_id=session.id)


@login_required
@require_GET
def chat_session_detail(request: HttpRequest, session_id: str) -> HttpResponse:
    session = _owned_session(request, session_id)
    transcript = chat_transcript(session=session)
    columns: list[dict[str, Any]] = [
        {"side": side, "model": session.model_for(side), "messages": transcript.get(side, [])} for side in session.sides
    ]
    context = {"session": session, "columns": columns, "max_prompt_chars": MAX_PROMPT_CHARS}
    return render(request, "playground/session.html", context)


@login_required
@require_POST
def chat_message_send(request: HttpRequest, session_id: str) -> HttpResponse:
    session = _owned_session(request, session_id)
    try:
        turn = chat_turn_start(session=session, content=request.POST.get("content", ""))
    except ApiError as exc:
        return JsonResponse({"error": exc.as_dict()}, status=exc.status)
    stream = ChatStream(caller=GatewayCaller.for_session(request, session.id), turn=turn)
    response = StreamingHttpResponse(stream, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


@login_required
@require_POST
def chat_session_delete_view(request: HttpRequest, session_id: str) -> HttpResponse:
    chat_session_delete(session=_owned_session(request, session_id))
    return redirect("playground:index")
