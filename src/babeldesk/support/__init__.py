"""The support pipeline: language detection and lock, the knowledge base, intent
matching, prompt building and handoff rules. Imports only core, store and telemetry;
modules are imported where used (``babeldesk.knowledge.kb``), nothing heavy loads here."""
