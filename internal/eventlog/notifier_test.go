package eventlog_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/eventlog"
	"github.com/klectr/klectr/internal/pipeline"
)

type appended struct {
	user, id string
	data     string
	at       time.Time
}

type fakeLog struct {
	got []appended
	err error
}

func (f *fakeLog) Append(_ context.Context, user, id string, data json.RawMessage, at time.Time) error {
	if f.err != nil {
		return f.err
	}
	f.got = append(f.got, appended{user, id, string(data), at})
	return nil
}

type sent struct {
	user, event string
	data        any
}

type fakeSender struct{ got []sent }

func (f *fakeSender) Send(_ context.Context, user, event string, data any) error {
	f.got = append(f.got, sent{user, event, data})
	return nil
}

type payload struct {
	EventID string `json:"eventId"`
	Status  string `json:"status"`
}

func TestNotifierLogsThenSends(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 11, 30, 1, 2, 3, 0, time.UTC)
	log, next := &fakeLog{}, &fakeSender{}
	n := &eventlog.Notifier{Log: log, Next: next, Event: "asset_processed", Now: func() time.Time { return at }}
	if err := n.Send(context.Background(), "u1", "asset_processed", payload{"e1", "completed"}); err != nil {
		t.Fatal(err)
	}
	want := `{"eventId":"e1","status":"completed"}`
	if len(log.got) != 1 || log.got[0] != (appended{"u1", "e1", want, at}) {
		t.Fatalf("appended %+v", log.got)
	}
	if len(next.got) != 1 || next.got[0].user != "u1" || next.got[0].event != "asset_processed" {
		t.Fatalf("sent %+v", next.got)
	}
	if raw, ok := next.got[0].data.(json.RawMessage); !ok || string(raw) != want {
		t.Errorf("sent data %#v, want the logged bytes %s", next.got[0].data, want)
	}

	// Other events pass through unlogged.
	if err := n.Send(context.Background(), "u1", "other", 1); err != nil || len(log.got) != 1 || len(next.got) != 2 {
		t.Errorf("other event: err %v, %d appended, %d sent", err, len(log.got), len(next.got))
	}
}

func TestNotifierAppendFailureSendsNothing(t *testing.T) {
	t.Parallel()
	boom := errors.New("disk full")
	next := &fakeSender{}
	n := &eventlog.Notifier{Log: &fakeLog{err: boom}, Next: next, Event: "asset_processed"}
	if err := n.Send(context.Background(), "u1", "asset_processed", payload{"e1", "failed"}); !errors.Is(err, boom) {
		t.Fatalf("Send = %v, want the append's error", err)
	}
	if len(next.got) != 0 {
		t.Errorf("an event the log refused was published: %+v", next.got)
	}
}

func TestNotifierRefusesEventWithoutID(t *testing.T) {
	t.Parallel()
	log, next := &fakeLog{}, &fakeSender{}
	n := &eventlog.Notifier{Log: log, Next: next, Event: "asset_processed"}
	for _, data := range []any{payload{}, map[string]any{"eventId": 7}, "x"} {
		if err := n.Send(context.Background(), "u1", "asset_processed", data); !errors.Is(err, eventlog.ErrInvalid) {
			t.Errorf("Send(%v) = %v, want ErrInvalid", data, err)
		}
	}
	if len(log.got)+len(next.got) != 0 {
		t.Errorf("logged %v, sent %v", log.got, next.got)
	}
}

// The pipeline's Handler takes the decorator as its Notifier unchanged.
var _ pipeline.Notifier = (*eventlog.Notifier)(nil)
