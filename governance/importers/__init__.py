"""Importers that turn hospital exports (FHIR, ...) into governance.records objects, Django-free."""
