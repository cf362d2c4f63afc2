"""Packaging beyond what pyproject.toml can say: templates/ and migrations/ installed inside the package.

They stay at the repository's top level (the design card) and are installed as
newsletter/templates and newsletter/migrations, where newsletter.resources finds them. pyproject.toml
cannot both discover packages and add mapped ones, so discovery happens here.
"""

from setuptools import find_namespace_packages, setup

BUNDLED = {"newsletter.templates": "templates", "newsletter.migrations": "migrations"}


def _bundled_packages() -> list[str]:
    """The mapped packages and their folders (templates/web/static, migrations/versions, ...) as packages."""
    found = []
    for package, folder in BUNDLED.items():
        found.append(package)
        found += [f"{package}.{sub}" for sub in find_namespace_packages(where=folder, exclude=["*__pycache__*"])]
    return found


setup(
    packages=[
        *find_namespace_packages(include=["newsletter", "newsletter.*", "workers", "workers.*"], exclude=["*__pycache__*"]),
        *_bundled_packages(),
    ],
    package_dir=BUNDLED,
)
