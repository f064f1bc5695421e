"""A model reference as users write it, parsed in one place: `raymaas predict`, a predict spec's
`model`, `raymaas serve` and a Serve config's models all take the same forms, and a `models:/`
URI means what it means to MLflow.

    NAME                    the registered model's champion (NAME@champion)
    NAME@ALIAS              the version an alias points at now
    NAME/VERSION            one version
    models:/NAME@ALIAS      as MLflow writes the two above
    models:/NAME/VERSION
    models:/MODEL_ID        a logged model (MLflow 3: `models:/m-...`), not a registered one

Each consumer decides which it takes (`ModelRef.registered` refuses a logged model in its
words). This module imports only the standard library, so the CLI parses a reference before
it imports MLflow; the registry look-up is raymaas.tracking.registry.find_version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "models:/"
CHAMPION = "champion"  # the alias a bare NAME follows; the gate moves it (raymaas.tracking.registry)
FORMS = "NAME (its champion), NAME@ALIAS, NAME/VERSION, models:/NAME@ALIAS, models:/NAME/VERSION or models:/MODEL_ID"
# MLflow's rules: an alias is letters, digits, `_` and `-`; a registered model's name has no
# `/` or `:` (and no `@` here, which would make NAME@ALIAS ambiguous).
_ALIAS = re.compile(r"[\w-]+")
_NOT_IN_NAMES = ("/", ":", "@")


class ModelRefError(ValueError):
    """A reference that is not one of the accepted forms, or not one its consumer takes."""


@dataclass(frozen=True)
class ModelRef:
    """A registered model by alias or by version, or a logged model by id: exactly one of
    alias, version and model_id, and a name unless model_id. ModelRefError otherwise."""

    name: str | None = None
    alias: str | None = None
    version: str | None = None
    model_id: str | None = None

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise ModelRefError(problem)

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """The reference `text` stands for; ModelRefError naming it and the accepted forms."""
        if not isinstance(text, str):
            raise ModelRefError(f"model {text!r} is not a model reference: give {FORMS}")
        body = text.strip().removeprefix(SCHEME)
        try:
            if not body:
                raise ModelRefError("it names no model")
            if ":" in body:
                scheme = body.partition(":")[0]
                raise ModelRefError(f"a {scheme}: URI is not a registered model; only models:/ URIs name one")
            name, slash, version = body.partition("/")
            if slash:
                if "@" in name:
                    raise ModelRefError("an alias or a version, not both")
                return cls(name, version=version)
            name, at, alias = body.rpartition("@")
            if at:
                return cls(name, alias=alias)
            if text.strip().startswith(SCHEME):  # MLflow 3 reads models:/X as the logged model whose id is X
                return cls(model_id=body)
            return cls(body, alias=CHAMPION)
        except ModelRefError as err:
            raise ModelRefError(f"model {text!r} is not a model reference ({err}): give {FORMS}") from None

    @property
    def uri(self) -> str:
        """The reference as MLflow loads it (mlflow.pyfunc.load_model, get_model_info)."""
        if self.model_id is not None:
            return SCHEME + self.model_id
        return f"{SCHEME}{self.name}@{self.alias}" if self.alias else f"{SCHEME}{self.name}/{self.version}"

    def __str__(self) -> str:
        """The short form: NAME@ALIAS, NAME/VERSION, or a logged model's URI."""
        return self.uri if self.model_id is not None else self.uri.removeprefix(SCHEME)

    def registered(self, consumer: str) -> ModelRef:
        """Self if it names a registered model; else ModelRefError saying that the consumer
        takes one, with the registered forms of the same word."""
        if self.model_id is None:
            return self
        word = self.model_id
        forms = f"{word} (its champion), {word}@ALIAS or {word}/VERSION" if not _name_problem(word) else FORMS
        raise ModelRefError(
            f"model {self.uri!r} is a logged model (MLflow's models:/MODEL_ID), not a registered one: {consumer} "
            f"takes a registered model: register it (mlflow.register_model), or give {forms}"
        )

    def _problem(self) -> str | None:
        given = [k for k in ("alias", "version", "model_id") if getattr(self, k) is not None]
        if len(given) != 1:
            return "an alias or a version, not both" if given else "neither an alias nor a version"
        if self.model_id is not None:
            if self.name is not None:
                return "a logged model's id has no name"
            if not self.model_id or "/" in self.model_id or "@" in self.model_id:
                return f"a logged model's id is one word, not {self.model_id!r}"
            return None
        problem = _name_problem(self.name)
        if problem:
            return problem
        if self.alias is not None and not _ALIAS.fullmatch(self.alias):
            return f"an alias is letters, digits, `_` and `-`, not {self.alias!r}"
        if self.version is not None:
            return _version_problem(self.version)
        return None


def _name_problem(name: str | None) -> str | None:
    if not name:
        return "it names no model"
    if name != name.strip() or any(c in name for c in _NOT_IN_NAMES):
        return f"a registered model's name has no `/`, `:` or `@` and no surrounding spaces: {name!r}"
    return None


def _version_problem(text: str) -> str | None:
    if text.isdigit() and text.isascii():
        return None
    if not text:
        return "no version after the `/`"
    if "/" in text:
        return "NAME/VERSION has one `/`"
    if text.lower() == "latest":
        return "NAME@latest is the newest version"
    return f"a version is a number, not {text!r}; MLflow's stages are deprecated: an alias replaces them"
