# Django's own test settings (tests/test_sqlite.py in the Django source),
# with CACHES pointing Django's built-in RedisCache at cachetd's RESP
# listener. run.sh sets CACHET_REDIS_URL.
import os

DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3"},
    "other": {"ENGINE": "django.db.backends.sqlite3"},
}
SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": os.environ.get("CACHET_REDIS_URL", "redis://127.0.0.1:7379"),
    },
}
