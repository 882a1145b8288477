package sqlitedb

import (
	"context"
	"database/sql/driver"
	"errors"
	"sync"

	"modernc.org/sqlite"
)

// maxCachedStmts bounds the statements one connection keeps prepared. The
// hot set (the intake's, the worker's, River's) is a few dozen; the bound
// only matters for SQL built at run time, such as a List with a filter.
const maxCachedStmts = 128

// connector opens modernc.org/sqlite connections that keep every statement
// they run prepared, keyed by its text: the driver otherwise parses and
// plans each Exec and Query anew, which under upload load cost a fifth of
// the server's CPU. Callers change nothing: database/sql hands ExecContext
// and QueryContext to the connection, which looks the statement up.
type connector struct {
	dsn string
	drv *sqlite.Driver
}

var _ driver.Connector = (*connector)(nil)

func (c *connector) Connect(context.Context) (driver.Conn, error) {
	dc, err := c.drv.Open(c.dsn)
	if err != nil {
		return nil, err
	}
	sc, ok := dc.(sqliteConn)
	if !ok {
		dc.Close()
		return nil, errors.New("sqlitedb: the sqlite driver's connection lacks a context method")
	}
	return &conn{sqliteConn: sc, stmts: make(map[string]*cachedStmt)}, nil
}

func (c *connector) Driver() driver.Driver { return c.drv }

// sqliteConn is what modernc.org/sqlite's connection implements and conn
// passes on.
type sqliteConn interface {
	driver.Conn
	driver.ConnBeginTx
	driver.ConnPrepareContext
	driver.ExecerContext
	driver.QueryerContext
	driver.Pinger
	driver.SessionResetter
	driver.Validator
}

// sqliteStmt and sqliteRows likewise.
type sqliteStmt interface {
	driver.Stmt
	driver.StmtExecContext
	driver.StmtQueryContext
}

type sqliteRows interface {
	driver.Rows
	driver.RowsColumnTypeDatabaseTypeName
	driver.RowsColumnTypeLength
	driver.RowsColumnTypeNullable
	driver.RowsColumnTypePrecisionScale
	driver.RowsColumnTypeScanType
}

// conn is a connection with a statement cache. database/sql uses a
// connection from one goroutine at a time (rows included); mu only guards
// the cache against a Rows.Close that database/sql runs from its
// context-watching goroutine.
type conn struct {
	sqliteConn

	mu    sync.Mutex
	stmts map[string]*cachedStmt
}

var (
	_ sqliteConn = (*conn)(nil)
	_ sqliteRows = (*cachedRows)(nil)
)

// cachedStmt is a prepared statement the connection keeps. While rows read
// from it are open it is busy: the same text then runs unprepared beside
// it. An evicted statement is closed once it is no longer busy.
type cachedStmt struct {
	sqliteStmt
	busy    bool
	evicted bool
}

// take returns the idle cached statement for query, preparing it if it is
// not cached, or nil if it is busy. It marks the statement busy.
func (c *conn) take(ctx context.Context, query string) (*cachedStmt, error) {
	c.mu.Lock()
	s := c.stmts[query]
	if s != nil {
		if s.busy {
			c.mu.Unlock()
			return nil, nil
		}
		s.busy = true
		c.mu.Unlock()
		return s, nil
	}
	c.mu.Unlock()
	ds, err := c.sqliteConn.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	ps, ok := ds.(sqliteStmt)
	if !ok {
		ds.Close()
		return nil, errors.New("sqlitedb: the sqlite driver's statement lacks a context method")
	}
	s = &cachedStmt{sqliteStmt: ps, busy: true}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.stmts) >= maxCachedStmts {
		c.evictOneLocked()
	}
	c.stmts[query] = s
	return s, nil
}

// evictOneLocked drops one statement (map order: any), closing it unless
// it is busy.
func (c *conn) evictOneLocked() {
	for q, s := range c.stmts {
		delete(c.stmts, q)
		if s.busy {
			s.evicted = true
		} else {
			s.Close()
		}
		return
	}
}

// release marks s idle again (closing it if it was evicted meanwhile).
func (c *conn) release(s *cachedStmt) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s.busy = false
	if s.evicted {
		s.Close()
	}
}

func (c *conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	s, err := c.take(ctx, query)
	if err != nil {
		return nil, err
	}
	if s == nil {
		return c.sqliteConn.ExecContext(ctx, query, args)
	}
	defer c.release(s)
	// The driver resets the statement after each run, failed or not.
	return s.ExecContext(ctx, args)
}

func (c *conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	s, err := c.take(ctx, query)
	if err != nil {
		return nil, err
	}
	if s == nil {
		return c.sqliteConn.QueryContext(ctx, query, args)
	}
	rows, err := s.QueryContext(ctx, args)
	if err != nil {
		c.release(s)
		return nil, err
	}
	sr, ok := rows.(sqliteRows)
	if !ok {
		rows.Close()
		c.release(s)
		return nil, errors.New("sqlitedb: the sqlite driver's rows lack column types")
	}
	// Closing the rows resets the statement; only then may it run again.
	return &cachedRows{sqliteRows: sr, release: sync.OnceFunc(func() { c.release(s) })}, nil
}

// Close closes the cached statements, then the connection.
func (c *conn) Close() error {
	c.mu.Lock()
	var errs []error
	for q, s := range c.stmts {
		delete(c.stmts, q)
		errs = append(errs, s.Close())
	}
	c.mu.Unlock()
	return errors.Join(append(errs, c.sqliteConn.Close())...)
}

// cachedRows gives its statement back to the cache when closed.
type cachedRows struct {
	sqliteRows
	release func()
}

func (r *cachedRows) Close() error {
	err := r.sqliteRows.Close()
	r.release()
	return err
}
