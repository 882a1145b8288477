package eventlog_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/eventlog"
	"github.com/klectr/klectr/internal/eventlog/sqlitelog"
	"github.com/klectr/klectr/internal/sqlitedb"
)

func TestReadPage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, err := sqlitedb.Open(ctx, filepath.Join(t.TempDir(), "klectr.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	l, err := sqlitelog.New(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		id := fmt.Sprintf("e%d", i)
		if err := l.Append(ctx, "u1", id, json.RawMessage(`{"eventId":"`+id+`"}`), time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	after := ""
	for range 10 {
		p, err := eventlog.ReadPage(ctx, l, "u1", after, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range p.Events {
			id, _ := eventlog.EventID(e)
			got = append(got, id)
			after = id
		}
		if !p.HasMore {
			break
		}
	}
	if fmt.Sprint(got) != "[e0 e1 e2 e3 e4]" {
		t.Errorf("paged by 2: %v", got)
	}
	p, err := eventlog.ReadPage(ctx, l, "u1", "e4", 2)
	if b, _ := json.Marshal(p); err != nil || string(b) != `{"events":[],"hasMore":false}` {
		t.Errorf("after the newest: %s, %v", b, err)
	}
	if _, err := eventlog.ReadPage(ctx, l, "u2", "e1", 2); !errors.Is(err, eventlog.ErrUnknownEvent) {
		t.Errorf("another user's event id: %v, want ErrUnknownEvent", err)
	}
}
