"""Draft proposers: each turns a request's context into a `DraftTree` (or nothing)."""
