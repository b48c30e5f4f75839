"""The small apps the security suite serves: Flask (WSGI), Starlette and FastAPI (ASGI), Django (both)."""
