FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY newsletter ./newsletter
COPY workers ./workers
COPY templates ./templates
COPY migrations ./migrations
RUN pip install --no-cache-dir -e . && useradd --create-home newsletter
USER newsletter
EXPOSE 8000
CMD ["newsletter", "web", "--host", "0.0.0.0", "--port", "8000"]
