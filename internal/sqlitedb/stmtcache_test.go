package sqlitedb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func openTest(t *testing.T) *DB {
	t.Helper()
	db, err := Open(context.Background(), filepath.Join(t.TempDir(), "k.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// cached returns how many statements the connection of c keeps, and whether
// query is one of them.
func cached(t *testing.T, c *sql.Conn, query string) (n int, has bool) {
	t.Helper()
	if err := c.Raw(func(dc any) error {
		cc := dc.(*conn)
		cc.mu.Lock()
		defer cc.mu.Unlock()
		n, has = len(cc.stmts), cc.stmts[query] != nil
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return n, has
}

func TestWriteIsSynchronousFull(t *testing.T) {
	t.Parallel()
	db := openTest(t)
	var sync int
	if err := db.Write.QueryRowContext(context.Background(), "PRAGMA synchronous").Scan(&sync); err != nil {
		t.Fatal(err)
	}
	if sync != 2 {
		t.Fatalf("synchronous = %d, want 2 (FULL)", sync)
	}
}

// TestStatementsStayPrepared: a statement run twice, on its own, in a
// transaction, failing or not, is prepared once and gives the right results.
func TestStatementsStayPrepared(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)
	c, err := db.Write.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.ExecContext(ctx, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	const ins = "INSERT INTO t (id, v) VALUES (?, ?)"
	for i := range 3 {
		if _, err := c.ExecContext(ctx, ins, i, fmt.Sprint("v", i)); err != nil {
			t.Fatal(err)
		}
	}
	n0, has := cached(t, c, ins)
	if !has {
		t.Fatal("the insert is not cached")
	}
	// A failing run (duplicate key) leaves the statement usable.
	if _, err := c.ExecContext(ctx, ins, 1, "dup"); err == nil {
		t.Fatal("duplicate insert succeeded")
	}
	tx, err := c.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, ins, 3, "v3"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ExecContext(ctx, ins, 4, "v4"); err != nil {
		t.Fatal(err)
	}
	const sel = "SELECT v FROM t WHERE id = ?"
	for id, want := range map[int]string{0: "v0", 2: "v2", 4: "v4"} {
		var got string
		if err := c.QueryRowContext(ctx, sel, id).Scan(&got); err != nil || got != want {
			t.Fatalf("row %d = %q, %v; want %q", id, got, err, want)
		}
	}
	if err := c.QueryRowContext(ctx, sel, 3).Scan(new(string)); !errors.Is(err, sql.ErrNoRows) {
		t.Fatalf("rolled-back row: %v, want sql.ErrNoRows", err)
	}
	if n, _ := cached(t, c, ins); n != n0+1 {
		t.Fatalf("%d statements cached, want %d: the insert was prepared again", n, n0+1)
	}
}

// TestBusyStatementRunsBeside: while rows of a statement are open, the same
// text runs again on the same connection, unprepared, and both read right.
func TestBusyStatementRunsBeside(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)
	c, err := db.Write.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.ExecContext(ctx, "CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1), (2), (3)"); err != nil {
		t.Fatal(err)
	}
	const q = "SELECT x FROM t WHERE x >= ? ORDER BY x"
	outer, err := c.QueryContext(ctx, q, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer outer.Close() // before c.Close, which waits for it
	var got []int
	for outer.Next() {
		var x int
		if err := outer.Scan(&x); err != nil {
			t.Fatal(err)
		}
		var inner []int
		rows, err := c.QueryContext(ctx, q, x)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var y int
			rows.Scan(&y)
			inner = append(inner, y)
		}
		rows.Close()
		if want := 4 - x; len(inner) != want {
			t.Fatalf("inner query from %d read %v, want %d rows", x, inner, want)
		}
		if got = append(got, x); len(got) > 3 {
			t.Fatalf("outer query read %v: the inner run restarted it", got)
		}
	}
	if err := outer.Close(); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != "[1 2 3]" {
		t.Fatalf("outer query read %v", got)
	}
	// Released: the next run uses the cached statement again.
	var n int
	if err := c.QueryRowContext(ctx, q, 3).Scan(&n); err != nil || n != 3 {
		t.Fatalf("after release: %d, %v", n, err)
	}
}

// TestCacheIsBounded: SQL built at run time does not grow the cache past
// maxCachedStmts, also while an evicted statement's rows are still open.
func TestCacheIsBounded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)
	c, err := db.Read.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	open, err := c.QueryContext(ctx, "SELECT value FROM json_each('[1,2]')")
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close() // before c.Close, which waits for it
	for i := range 3 * maxCachedStmts {
		var n int
		if err := c.QueryRowContext(ctx, fmt.Sprintf("SELECT %d", i)).Scan(&n); err != nil || n != i {
			t.Fatalf("SELECT %d = %d, %v", i, n, err)
		}
	}
	if n, _ := cached(t, c, ""); n > maxCachedStmts {
		t.Fatalf("%d statements cached, bound %d", n, maxCachedStmts)
	}
	var vals []int
	for open.Next() {
		var v int
		open.Scan(&v)
		vals = append(vals, v)
	}
	if err := open.Close(); err != nil || fmt.Sprint(vals) != "[1 2]" {
		t.Fatalf("rows of an evicted statement: %v, %v", vals, err)
	}
}

// TestCachedStatementSeesSchemaChange: a statement prepared before an ALTER
// TABLE reads the new column after it.
func TestCachedStatementSeesSchemaChange(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)
	if _, err := db.Write.ExecContext(ctx, "CREATE TABLE t (a INTEGER); INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	cols := func() []string {
		rows, err := db.Write.QueryContext(ctx, "SELECT * FROM t")
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		c, err := rows.Columns()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if got := fmt.Sprint(cols()); got != "[a]" {
		t.Fatalf("columns %s", got)
	}
	if _, err := db.Write.ExecContext(ctx, "ALTER TABLE t ADD COLUMN b TEXT"); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(cols()); got != "[a b]" {
		t.Fatalf("columns after ALTER TABLE: %s, want [a b]", got)
	}
}

// TestCachedStatementsUnderConcurrency: the read pool's connections each
// keep their statements; concurrent readers and a writer with cancelled
// contexts mixed in get right answers (run with -race).
func TestCachedStatementsUnderConcurrency(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openTest(t)
	if _, err := db.Write.ExecContext(ctx, "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 50 {
				id := w*1000 + i
				if _, err := db.Write.ExecContext(ctx, "INSERT INTO t (id, v) VALUES (?, ?)", id, id*2); err != nil {
					t.Error(err)
					return
				}
				var v int
				if err := db.Read.QueryRowContext(ctx, "SELECT v FROM t WHERE id = ?", id).Scan(&v); err != nil || v != id*2 {
					t.Errorf("read %d: %d, %v", id, v, err)
					return
				}
				// A call whose context is already over fails and leaves
				// the cached statement usable.
				cctx, cancel := context.WithTimeout(ctx, -time.Second)
				if err := db.Read.QueryRowContext(cctx, "SELECT v FROM t WHERE id = ?", id).Scan(&v); err == nil {
					t.Error("query with a cancelled context succeeded")
				}
				cancel()
			}
		})
	}
	wg.Wait()
	var n int
	if err := db.Read.QueryRowContext(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil || n != 400 {
		t.Fatalf("count = %d, %v; want 400", n, err)
	}
}
