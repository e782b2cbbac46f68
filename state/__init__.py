"""The SQLite database: schema, migrations and the queries everything else records through."""
