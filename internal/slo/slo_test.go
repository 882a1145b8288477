package slo

import (
	"testing"
	"time"

	"github.com/klectr/klectr/internal/asset"
)

func at(t0 time.Time, ms int) *time.Time {
	t := t0.Add(time.Duration(ms) * time.Millisecond)
	return &t
}

// TestMeasure: each target's percentile over finished steps, a miss once a
// step passes its target, a stuck step counted at its age, null without data.
func TestMeasure(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0.Add(10 * time.Minute)
	var tls []asset.Timeline
	// 19 quick runs: confirmed in 100 ms, processed in 1 s, event in 50 ms.
	for range 19 {
		tls = append(tls, asset.Timeline{ReceivedAt: at(t0, 0), EnqueuedAt: at(t0, 100), StartedAt: at(t0, 200),
			AnalyzedAt: at(t0, 900), ProcessedAt: at(t0, 1000), EventSentAt: at(t0, 1050)})
	}
	// One confirmed in 3 s whose job is stuck (no final state after 10 min).
	tls = append(tls, asset.Timeline{ReceivedAt: at(t0, 0), EnqueuedAt: at(t0, 3000)})
	// One received just now: not final, but not late either; not counted.
	tls = append(tls, asset.Timeline{ReceivedAt: &now, EnqueuedAt: &now})

	got := map[string]Result{}
	for _, r := range Measure(tls, now) {
		got[r.Name] = r
	}
	check := func(name string, samples int, value float64, met bool) {
		t.Helper()
		r := got[name]
		if r.Samples != samples || r.ValueSeconds == nil || *r.ValueSeconds != value || r.Met == nil || *r.Met != met {
			t.Errorf("%s = %d samples, value %v, met %v; want %d, %v, %t", name, r.Samples, deref(r.ValueSeconds), deref(r.Met), samples, value, met)
		}
	}
	// p99 of 21 is the slowest: the 3 s confirmation misses 2 s.
	check("confirmation", 21, 3, false)
	// p95 of 20 (nearest rank 19) is a quick run, although the stuck one
	// counts at its age (600 s): 95 % under 60 s is met.
	check("processing", 20, 1, true)
	check("event", 19, 0.05, true)

	none := Measure(nil, now)
	for _, r := range none {
		if r.Samples != 0 || r.ValueSeconds != nil || r.Met != nil {
			t.Errorf("%s without data = %+v, want 0 samples, null value and met", r.Name, r)
		}
	}
}

func TestPercentileNearestRank(t *testing.T) {
	t.Parallel()
	ds := []time.Duration{5, 1, 4, 2, 3, 6, 7, 8, 9, 10}
	for p, want := range map[float64]time.Duration{50: 5, 95: 10, 99: 10, 10: 1, 100: 10} {
		if got, _ := Percentile(ds, p); got != want {
			t.Errorf("p%v = %v, want %v", p, got, want)
		}
	}
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}
