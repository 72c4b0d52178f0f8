"""mailcare: a support-inbox daemon that threads mail into cases, decides scope, answers
like a person and keeps one owner per case."""

__version__ = "0.1.0"
