FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml setup.py README.md alembic.ini ./
COPY newsletter ./newsletter
COPY workers ./workers
COPY templates ./templates
COPY migrations ./migrations
# A regular install: templates and migrations go inside the package, so /app is not needed at run time.
RUN pip install --no-cache-dir . && rm -rf /app/build && useradd --create-home newsletter
USER newsletter
WORKDIR /home/newsletter
EXPOSE 8000
CMD ["newsletter", "web", "--host", "0.0.0.0", "--port", "8000"]
