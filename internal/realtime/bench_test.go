package realtime_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/pipeline"
	"github.com/klectr/klectr/internal/realtime"
)

// BenchmarkSendWebSocket measures server throughput without the Node client:
// 1,000 raw websocket clients in this process, one user each, read
// everything; each op is one asset_processed Send, round-robin over users,
// and the benchmark waits until every event has been read.
//
//	go test -run '^$' -bench SendWebSocket -benchtime 50000x ./internal/realtime/
func BenchmarkSendWebSocket(b *testing.B) {
	const clients = 1000
	ts := startServer(b, "", nil, func(o *realtime.Options) { o.Logger = slog.New(slog.DiscardHandler) })
	w := wire{b, ts}
	var received atomic.Int64
	var readers sync.WaitGroup
	for i := range clients {
		c := w.connectWS(validToken(fmt.Sprint("b", i)))
		readers.Go(func() {
			for {
				_, msg, err := c.Read(context.Background())
				if err != nil {
					return
				}
				if len(msg) > 0 && msg[0] == '2' { // ping
					_ = c.Write(context.Background(), 1, []byte("3"))
					continue
				}
				received.Add(1)
			}
		})
	}
	ev := assetEvent("b0", 0)
	ctx := context.Background()
	b.ResetTimer()
	for i := range b.N {
		user := fmt.Sprint("b", i%clients)
		ev.UserID = user
		if err := ts.Send(ctx, user, pipeline.EventAssetProcessed, ev); err != nil {
			b.Fatal(err)
		}
	}
	deadline := time.Now().Add(time.Minute)
	for received.Load() < int64(b.N) {
		if time.Now().After(deadline) {
			b.Fatalf("received %d of %d", received.Load(), b.N)
		}
		time.Sleep(time.Millisecond) // polling a counter in a benchmark, not test synchronisation
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	ts.close()
	readers.Wait()
}
