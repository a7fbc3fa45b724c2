"""FHIR R4 input checks, with the maintained `fhir.resources` models (R4B package: FHIR 4.3, the
R4-compatible release; its top-level models are R5 and reject R4 JSON).

A file is treated as FHIR when it is a JSON object with a `resourceType`: it must then validate
against that resource's model before the wallet encrypts it, so a clinician finds a broken
resource at upload time rather than a colleague at read time. Anything else (a PDF, an image,
plain text) is stored as given.
"""

from __future__ import annotations

import json
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from healthnode.errors import HealthnodeError


class FhirError(HealthnodeError):
    """A FHIR resource that does not validate."""


def fhir_resource_type(data: bytes) -> str | None:
    """The resourceType of a FHIR JSON document, None for anything that is not one."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):  # also a number too long for int()
        return None
    if isinstance(document, dict) and isinstance(document.get("resourceType"), str):
        return str(document["resourceType"])
    return None


def validate_fhir(data: bytes) -> str:
    """Validate a FHIR R4 JSON resource; its resourceType. FhirError names the first problem."""
    document: Any = json.loads(data)
    resource_type = str(document["resourceType"])
    try:
        model = get_fhir_model_class(resource_type)
    except (KeyError, ValueError, LookupError):
        raise FhirError(f"FHIR: unknown resourceType {resource_type[:40]!r}") from None
    try:
        model.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or resource_type
        raise FhirError(f"FHIR {resource_type} does not validate ({error.error_count()} "
                        f"problems); first at {where[:120]}: {first.get('msg', '')[:120]}") \
            from None
    except (KeyError, TypeError) as error:
        # fhir_core looks a contained resource's model up by its resourceType unchecked: an
        # unknown type raises KeyError, one that is not a string TypeError (found by fuzzing).
        raise FhirError(f"FHIR {resource_type} does not validate: a resource inside it has an "
                        f"unknown or malformed resourceType ({type(error).__name__}: "
                        f"{str(error)[:80]})") from None
    return resource_type
