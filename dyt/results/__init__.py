"""Reading run dirs and building paper-vs-ours tables and figures."""
