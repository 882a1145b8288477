package sqlitestore

import (
	"embed"
	"io/fs"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// migrationLine names this package's migrations in klectr_migrations (see
// sqlitedb.DB.Migrate).
const migrationLine = "asset"

// migrations holds the NNNN_name.sql files. fs.Sub fails only on an invalid
// path name, which "migrations" is not.
var migrations, _ = fs.Sub(migrationFiles, "migrations")
