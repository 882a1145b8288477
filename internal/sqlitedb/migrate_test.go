package sqlitedb

import (
	"context"
	"strings"
	"testing"
	"testing/fstest"
)

func sqlFiles(kv ...string) fstest.MapFS {
	m := fstest.MapFS{}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i]] = &fstest.MapFile{Data: []byte(kv[i+1])}
	}
	return m
}

func versions(t *testing.T, db *DB, line string) []int {
	t.Helper()
	rows, err := db.Read.QueryContext(context.Background(),
		`SELECT version FROM klectr_migrations WHERE line = ? ORDER BY version`, line)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var vs []int
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		vs = append(vs, v)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return vs
}

// Each start applies only the versions its line has not recorded; lines are
// counted apart.
func TestMigrateAppliesEachVersionOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)
	v1 := sqlFiles("0001_a.sql", `CREATE TABLE a (x INTEGER)`)
	if err := db.Migrate(ctx, "one", v1); err != nil {
		t.Fatal(err)
	}
	// 0001 without IF NOT EXISTS fails if it runs again.
	v2 := sqlFiles("0001_a.sql", `CREATE TABLE a (x INTEGER)`, "0002_b.sql", `CREATE TABLE b (y INTEGER)`)
	for range 2 {
		if err := db.Migrate(ctx, "one", v2); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Migrate(ctx, "two", sqlFiles("0001_c.sql", `CREATE TABLE c (z INTEGER)`)); err != nil {
		t.Fatal(err)
	}
	if got := versions(t, db, "one"); len(got) != 2 || got[0] != 1 || got[1] != 2 {
		t.Fatalf("line one has versions %v, want [1 2]", got)
	}
	if got := versions(t, db, "two"); len(got) != 1 || got[0] != 1 {
		t.Fatalf("line two has versions %v, want [1]", got)
	}
	if _, err := db.Read.ExecContext(ctx, `SELECT x FROM a; SELECT y FROM b; SELECT z FROM c`); err != nil {
		t.Fatalf("migrated tables: %v", err)
	}
}

// A failing migration leaves the schema and the bookkeeping as they were.
func TestMigrateFailureChangesNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)
	err := db.Migrate(ctx, "one", sqlFiles("0001_a.sql", `CREATE TABLE a (x INTEGER)`, "0002_bad.sql", `NOT SQL`))
	if err == nil || !strings.Contains(err.Error(), "0002_bad.sql") {
		t.Fatalf("Migrate = %v, want an error naming 0002_bad.sql", err)
	}
	var n int
	if err := db.Read.QueryRowContext(ctx,
		`SELECT count(*) FROM sqlite_schema WHERE name IN ('a', 'klectr_migrations')`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("%d of a, klectr_migrations exist after a failed migration, want none", n)
	}
}

// An older binary must not run on a schema a newer one migrated.
func TestMigrateRefusesNewerSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)
	files := sqlFiles("0001_a.sql", `CREATE TABLE a (x INTEGER)`)
	if err := db.Migrate(ctx, "one", files); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Write.ExecContext(ctx,
		`INSERT INTO klectr_migrations (line, version, name, applied_at) VALUES ('one', 9999, '9999_future.sql', 0)`); err != nil {
		t.Fatal(err)
	}
	if err := db.Migrate(ctx, "one", files); err == nil || !strings.Contains(err.Error(), "9999") {
		t.Fatalf("Migrate on a newer schema = %v, want an error naming version 9999", err)
	}
	// Another line's newer version is not this line's business.
	if err := db.Migrate(ctx, "two", sqlFiles("0001_c.sql", `CREATE TABLE c (z INTEGER)`)); err != nil {
		t.Fatalf("other line: %v", err)
	}
}

func TestMigrateRejectsMisnamedFiles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)
	for _, files := range []fstest.MapFS{
		sqlFiles(),
		sqlFiles("a.sql", `SELECT 1`),
		sqlFiles("0001_a.txt", `SELECT 1`),
		sqlFiles("0000_a.sql", `SELECT 1`),
		sqlFiles("0001_a.sql", `SELECT 1`, "1_b.sql", `SELECT 1`),
	} {
		if err := db.Migrate(ctx, "one", files); err == nil {
			t.Errorf("Migrate(%v) = nil, want an error", files)
		}
	}
	var n int
	if err := db.Read.QueryRowContext(ctx,
		`SELECT count(*) FROM sqlite_schema WHERE name = 'klectr_migrations'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatal("refused files created klectr_migrations")
	}
}
