package app

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

func TestLoopRunsUntilStopAndStopWaits(t *testing.T) {
	t.Parallel()
	var runs atomic.Int32
	var inRun atomic.Bool
	started := make(chan struct{}, 1)
	l := newLoop(0, time.Millisecond, func(ctx context.Context) {
		inRun.Store(true)
		defer inRun.Store(false)
		runs.Add(1)
		select {
		case started <- struct{}{}:
		default:
		}
		<-ctx.Done() // a long sweep: only Stop ends it
	})
	l.Start()
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("the loop did not run")
	}
	stopped := make(chan struct{})
	go func() { l.Stop(); l.Stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("Stop did not return")
	}
	if inRun.Load() || runs.Load() != 1 {
		t.Fatalf("after Stop: in a run %v, %d runs", inRun.Load(), runs.Load())
	}
	newLoop(0, time.Second, func(context.Context) {}).Stop() // without Start
}
