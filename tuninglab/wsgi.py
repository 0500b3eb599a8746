"""WSGI entry point (gunicorn, uWSGI, and ``runserver``'s serving process all load it).

Only a process that serves requests imports this module (``runserver`` loads it in its
serving child, never in the autoreloader's watching parent; ``migrate`` and test runs not at
all), so this is where embedded mode starts its in-process worker and sweeper: a job a
previous process left behind resumes when the server comes back, not on the next submit.
"""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

from tuninglab import dispatch

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tuninglab.settings")
application = get_wsgi_application()

# After get_wsgi_application(): the apps are ready, so the workers app has registered its transport.
dispatch.start_local_worker()
