package eventlog_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/eventlog"
)

type expireRecorder struct {
	mu     sync.Mutex
	before []time.Time
	called chan struct{}
}

func (e *expireRecorder) Expire(_ context.Context, before time.Time) (int64, error) {
	e.mu.Lock()
	e.before = append(e.before, before)
	e.mu.Unlock()
	select {
	case e.called <- struct{}{}:
	default:
	}
	return 1, nil
}

func TestRunExpiry(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	rec := &expireRecorder{called: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		eventlog.RunExpiry(ctx, rec, eventlog.DefaultRetention, 5*time.Millisecond, func() time.Time { return now }, slog.New(slog.DiscardHandler))
	}()
	for range 2 { // at once, then on the ticker
		select {
		case <-rec.called:
		case <-time.After(5 * time.Second):
			t.Fatal("Expire was not called")
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("RunExpiry did not return after ctx ended")
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if want := now.Add(-7 * 24 * time.Hour); !rec.before[0].Equal(want) {
		t.Errorf("Expire(before %v), want %v", rec.before[0], want)
	}
}
