from relay.gunicorn_conf import *  # noqa: F403  (plain `gunicorn` in this folder reads this file)
