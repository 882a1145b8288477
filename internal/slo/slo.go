// Package slo measures the pipeline against the service's targets, from the
// assets' timelines (asset.Timeline), so that every process of a scale-out
// deployment reports the same figures: they come from the shared store, not
// from one process's memory.
//
// The targets are the original plan's: an upload is confirmed in under 2 s,
// 95 % of jobs are processed in under 60 s, and the asset_processed event
// goes out under 1 s after the final state. The plan gives a share only for
// processing (p95); for the other two it gives none, so they are measured
// at p99, where one outlier in a small sample does not decide.
package slo

import (
	"math"
	"slices"
	"time"

	"github.com/klectr/klectr/internal/asset"
)

// Target is one objective: a percentile of a duration that must stay under
// a bound.
type Target struct {
	Name        string
	Description string
	Percentile  float64 // 0 < p ≤ 100
	Under       time.Duration
	// from and to are the step's timestamps. A step that has not ended
	// but has already lasted longer than Under counts with its age so far
	// (a lower bound, a known miss), so that a stuck job shows up instead
	// of leaving the sample.
	from, to func(asset.Timeline) *time.Time
}

// Targets are the plan's three objectives.
var Targets = []Target{
	{Name: "confirmation", Description: "upload request received → asset and job durable (the 202 follows)",
		Percentile: 99, Under: 2 * time.Second,
		from: func(tl asset.Timeline) *time.Time { return tl.ReceivedAt },
		to:   func(tl asset.Timeline) *time.Time { return tl.EnqueuedAt }},
	{Name: "processing", Description: "upload request received → final state stored (draft or failed)",
		Percentile: 95, Under: 60 * time.Second,
		from: func(tl asset.Timeline) *time.Time { return tl.ReceivedAt },
		to:   func(tl asset.Timeline) *time.Time { return tl.ProcessedAt }},
	{Name: "event", Description: "final state stored → asset_processed event published",
		Percentile: 99, Under: time.Second,
		from: func(tl asset.Timeline) *time.Time { return tl.ProcessedAt },
		to:   func(tl asset.Timeline) *time.Time { return tl.EventSentAt }},
}

// span is end−start; with no end yet, now−start once that exceeds bound.
func span(start, end *time.Time, now time.Time, bound time.Duration) (time.Duration, bool) {
	switch {
	case start == nil:
		return 0, false
	case end != nil:
		return end.Sub(*start), true
	case now.Sub(*start) > bound:
		return now.Sub(*start), true
	}
	return 0, false
}

// Result is a Target measured over a sample.
type Result struct {
	Name          string   `json:"name"`
	Description   string   `json:"description"`
	TargetSeconds float64  `json:"targetSeconds"`
	Percentile    float64  `json:"percentile"`
	ValueSeconds  *float64 `json:"valueSeconds"` // null: no data
	Samples       int      `json:"samples"`
	Met           *bool    `json:"met"` // value < target; null: no data
}

// Stage is the distribution of one step of the pipeline over a sample, for
// reading the objectives: which step the time went to.
type Stage struct {
	Name       string   `json:"name"`
	From       string   `json:"from"`
	To         string   `json:"to"`
	Samples    int      `json:"samples"`
	P50Seconds *float64 `json:"p50Seconds"`
	P95Seconds *float64 `json:"p95Seconds"`
	P99Seconds *float64 `json:"p99Seconds"`
}

// Measure evaluates every Target over tls at now.
func Measure(tls []asset.Timeline, now time.Time) []Result {
	out := make([]Result, len(Targets))
	for i, t := range Targets {
		var ds []time.Duration
		for _, tl := range tls {
			if d, ok := span(t.from(tl), t.to(tl), now, t.Under); ok {
				ds = append(ds, d)
			}
		}
		r := Result{Name: t.Name, Description: t.Description, TargetSeconds: t.Under.Seconds(),
			Percentile: t.Percentile, Samples: len(ds)}
		if v, ok := Percentile(ds, t.Percentile); ok {
			secs := v.Seconds()
			met := v < t.Under
			r.ValueSeconds, r.Met = &secs, &met
		}
		out[i] = r
	}
	return out
}

// Stages returns the p50, p95 and p99 of each step between two recorded
// timestamps (finished steps only).
func Stages(tls []asset.Timeline) []Stage {
	steps := []struct {
		name, from, to string
		get            func(asset.Timeline) (*time.Time, *time.Time)
	}{
		{"intake", "receivedAt", "enqueuedAt", func(t asset.Timeline) (*time.Time, *time.Time) { return t.ReceivedAt, t.EnqueuedAt }},
		{"queueWait", "enqueuedAt", "startedAt", func(t asset.Timeline) (*time.Time, *time.Time) { return t.EnqueuedAt, t.StartedAt }},
		{"analysis", "startedAt", "analyzedAt", func(t asset.Timeline) (*time.Time, *time.Time) { return t.StartedAt, t.AnalyzedAt }},
		{"store", "analyzedAt", "processedAt", func(t asset.Timeline) (*time.Time, *time.Time) { return t.AnalyzedAt, t.ProcessedAt }},
		{"endToEnd", "receivedAt", "processedAt", func(t asset.Timeline) (*time.Time, *time.Time) { return t.ReceivedAt, t.ProcessedAt }},
		{"eventLag", "processedAt", "eventSentAt", func(t asset.Timeline) (*time.Time, *time.Time) { return t.ProcessedAt, t.EventSentAt }},
	}
	out := make([]Stage, len(steps))
	for i, st := range steps {
		var ds []time.Duration
		for _, tl := range tls {
			if a, b := st.get(tl); a != nil && b != nil {
				ds = append(ds, b.Sub(*a))
			}
		}
		s := Stage{Name: st.name, From: st.from, To: st.to, Samples: len(ds)}
		s.P50Seconds, s.P95Seconds, s.P99Seconds = seconds(ds, 50), seconds(ds, 95), seconds(ds, 99)
		out[i] = s
	}
	return out
}

func seconds(ds []time.Duration, p float64) *float64 {
	v, ok := Percentile(ds, p)
	if !ok {
		return nil
	}
	s := v.Seconds()
	return &s
}

// Percentile is the nearest-rank p-th percentile of ds (the smallest value
// at least p % of ds are at or under); false when ds is empty. It sorts ds.
func Percentile(ds []time.Duration, p float64) (time.Duration, bool) {
	if len(ds) == 0 {
		return 0, false
	}
	slices.Sort(ds)
	rank := int(math.Ceil(p / 100 * float64(len(ds))))
	return ds[min(max(rank, 1), len(ds))-1], true
}
