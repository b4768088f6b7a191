"""Requests checked against MISP's own OpenAPI description (`../shared/data/misp-openapi.yaml`).

MISP publishes an OpenAPI 3.0 description of its REST API; `MispOpenApi` loads it and says
what is wrong with a request misp-dns sends: the header its security scheme names for the
API key, the JSON content type, and the body against the operation's request schema. The
schema check covers what that file uses: `$ref`, `type` (with `nullable`), `properties`,
`required`, `additionalProperties`, `items`, `enum`, `pattern`, `minLength`/`maxLength`,
`minimum`/`maximum`, `oneOf`/`anyOf`/`allOf`. Keys the schema does not list are allowed, as
OpenAPI allows them unless `additionalProperties` is false (MISP's sighting `type` and
`source` are such keys: MISP reads them, its description leaves them out).

The MISP stand-in (`misp_stand_in`) runs every `/sightings/add` it receives through this,
and the unit tests of the sightings reporter check their bodies with it too.

The file is found beside the repository (`../shared/data`), or in the folder named by
`MISP_DNS_SHARED_DATA`; `SPEC` is its path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["SPEC", "MispOpenApi"]

_REPOSITORY = Path(__file__).resolve().parents[2]
SPEC = (
    Path(os.environ.get("MISP_DNS_SHARED_DATA") or _REPOSITORY.parent / "shared" / "data")
    / "misp-openapi.yaml"
)

_TYPES: Mapping[str, Any] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "array": list,
    "object": dict,
}


class MispOpenApi:
    """MISP's OpenAPI description, and checks of requests against it."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document

    @classmethod
    @cache
    def load(cls, path: Path = SPEC) -> MispOpenApi:
        """Read the description (YAML) once per path."""
        import yaml

        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        with open(path, encoding="utf-8") as file:
            return cls(yaml.load(file, Loader=loader))

    def key_header(self) -> str:
        """The header the API key travels in, from the security scheme every call uses."""
        [requirement] = self.document["security"]
        [scheme] = requirement
        found = self.document["components"]["securitySchemes"][scheme]
        assert found["type"] == "apiKey" and found["in"] == "header", found
        return str(found["name"])

    def request_schema(self, path: str, method: str = "post") -> Mapping[str, Any]:
        """The JSON schema of the body of `method` `path`."""
        body = self._resolve(self.document["paths"][path][method]["requestBody"])
        return body["content"]["application/json"]["schema"]

    def request_problems(
        self, path: str, headers: Mapping[str, str], body: Any, method: str = "post"
    ) -> list[str]:
        """What is wrong with a request (header names in lower case, the body decoded)."""
        problems = []
        if not headers.get(self.key_header().lower()):
            problems.append(f"no {self.key_header()} header (the API key)")
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            problems.append(f"content-type {content_type!r}, not application/json")
        problems += self.problems(self.request_schema(path, method), body, "body")
        return problems

    def problems(self, schema: Mapping[str, Any], value: Any, where: str) -> list[str]:
        """Where `value` breaks `schema`, one line per fault (empty when it conforms)."""
        schema = self._resolve(schema)
        if value is None:
            return [] if schema.get("nullable") else [f"{where}: null is not allowed"]
        found: list[str] = []
        for keyword in ("oneOf", "anyOf"):
            if keyword in schema:
                fitting = [s for s in schema[keyword] if not self.problems(s, value, where)]
                if not fitting or (keyword == "oneOf" and len(fitting) > 1):
                    found.append(f"{where}: fits {len(fitting)} of the {keyword} choices")
        for part in schema.get("allOf", ()):
            found += self.problems(part, value, where)
        kind = schema.get("type")
        if kind is not None:
            expected = _TYPES[kind]
            if not isinstance(value, expected) or (
                isinstance(value, bool) and kind in ("integer", "number")
            ):
                return [*found, f"{where}: expected {kind}, got {type(value).__name__}"]
        if "enum" in schema and value not in schema["enum"]:
            found.append(f"{where}: {value!r} is not one of {schema['enum']}")
        if isinstance(value, str):
            found += _string_problems(schema, value, where)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if "minimum" in schema and value < schema["minimum"]:
                found.append(f"{where}: {value} is below {schema['minimum']}")
            if "maximum" in schema and value > schema["maximum"]:
                found.append(f"{where}: {value} is above {schema['maximum']}")
        if isinstance(value, list) and "items" in schema:
            for index, item in enumerate(value):
                found += self.problems(schema["items"], item, f"{where}[{index}]")
        if isinstance(value, dict):
            found += self._object_problems(schema, value, where)
        return found

    def _object_problems(
        self, schema: Mapping[str, Any], value: Mapping[str, Any], where: str
    ) -> list[str]:
        found = [
            f"{where}: {name!r} is required"
            for name in schema.get("required", ())
            if (name not in value)
        ]
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                found += self.problems(properties[name], item, f"{where}.{name}")
            elif extra is False:
                found.append(f"{where}: {name!r} is not a property the schema allows")
            elif isinstance(extra, Mapping):
                found += self.problems(extra, item, f"{where}.{name}")
        return found

    def _resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        while "$ref" in schema:
            reference = schema["$ref"]
            assert reference.startswith("#/"), reference
            node: Any = self.document
            for part in reference[2:].split("/"):
                node = node[part]
            schema = node
        return schema


def _string_problems(schema: Mapping[str, Any], value: str, where: str) -> list[str]:
    found = []
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        found.append(f"{where}: longer than {schema['maxLength']} characters")
    if "minLength" in schema and len(value) < schema["minLength"]:
        found.append(f"{where}: shorter than {schema['minLength']} characters")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        found.append(f"{where}: {value[:40]!r} does not match {schema['pattern']!r}")
    return found
