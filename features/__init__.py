"""Features: the demo app's tables, SQL feature definitions, the feature schema and builders."""
