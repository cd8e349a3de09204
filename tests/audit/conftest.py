"""tests/audit/second_domain/ is a fork's domain (its loader's own tests included), not tests of this repo."""

collect_ignore = ["second_domain"]
