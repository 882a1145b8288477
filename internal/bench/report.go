package bench

import (
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"
)

// Report is what one phase measured. The event fields are set only for a
// klectr target (not for the sink).
type Report struct {
	Label      string
	Start, End time.Time // first request sent, last response read
	Requests   int
	Accepted   int            // 202 replies
	Assets     int            // assets in those replies
	ByStatus   map[int]int    // replies by status, 202 included
	FirstBody  map[int]string // first body of each non-202 status
	Transport  map[string]int // requests without a usable reply, by error
	Submit     []time.Duration

	Events     bool
	Received   int // every asset_processed receipt
	Delivered  int // acknowledged assets whose event reached their owner's socket
	During     int // of Delivered, received by End
	LastEvent  time.Time
	Missing    int // acknowledged assets whose owner never got their event
	Duplicates int // eventIds received more than once
	Repeats    int // receipts beyond the first of an eventId
	CrossUser  int // receipts at a socket whose user does not own the event or its asset
	Unknown    int // the socket's own events for assets this run did not get a 202 for
	BadTime    int // events whose processedAt does not parse
	E2E        []time.Duration
	Lag        []time.Duration
	Dropped    int // sockets that ended before the run did

	Proc *ProcStats
}

// analyze builds a phase's report from its uploads and receipts; users are
// the user ids, by index.
func analyze(label string, users []string, ups []upload, recs []receipt, events bool) *Report {
	r := &Report{
		Label: label, Events: events,
		ByStatus: map[int]int{}, FirstBody: map[int]string{}, Transport: map[string]int{},
	}
	type acked struct {
		user  int
		start time.Time
	}
	owner := map[string]acked{}
	for _, u := range ups {
		r.Requests++
		if r.Start.IsZero() || u.start.Before(r.Start) {
			r.Start = u.start
		}
		if u.end.After(r.End) {
			r.End = u.end
		}
		switch {
		case u.err != "":
			r.Transport[u.err]++
			continue
		case u.status != http.StatusAccepted:
			if _, ok := r.FirstBody[u.status]; !ok {
				r.FirstBody[u.status] = u.body
			}
		default:
			r.Accepted++
			r.Assets += len(u.assetIDs)
			for _, id := range u.assetIDs {
				owner[id] = acked{u.user, u.start}
			}
		}
		r.ByStatus[u.status]++
		r.Submit = append(r.Submit, u.end.Sub(u.start))
	}
	slices.Sort(r.Submit)
	if !events {
		return r
	}

	byEvent := map[string]int{}
	first := map[string]bool{} // assets already received by their owner
	for _, rc := range recs {
		a, known := owner[rc.ev.AssetID]
		if rc.ev.UserID != users[rc.socket] || (known && a.user != rc.socket) {
			r.CrossUser++
			continue
		}
		r.Received++
		if byEvent[rc.ev.EventID]++; byEvent[rc.ev.EventID] > 1 {
			r.Repeats++
			if byEvent[rc.ev.EventID] == 2 {
				r.Duplicates++
			}
			continue
		}
		if pt, err := time.Parse(time.RFC3339Nano, rc.ev.ProcessedAt); err == nil {
			r.Lag = append(r.Lag, rc.at.Sub(pt))
		} else {
			r.BadTime++
		}
		if !known {
			r.Unknown++
			continue
		}
		if first[rc.ev.AssetID] {
			continue // a second event for the asset, under a new eventId
		}
		first[rc.ev.AssetID] = true
		r.Delivered++
		if !rc.at.After(r.End) {
			r.During++
		}
		if rc.at.After(r.LastEvent) {
			r.LastEvent = rc.at
		}
		r.E2E = append(r.E2E, rc.at.Sub(a.start))
	}
	r.Missing = len(owner) - r.Delivered
	slices.Sort(r.E2E)
	slices.Sort(r.Lag)
	return r
}

// percentile is the nearest-rank q-th percentile (0 < q <= 100) of sorted.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q/100*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// UploadRate is the 202s per second of the upload phase.
func (r *Report) UploadRate() float64 {
	if d := r.End.Sub(r.Start).Seconds(); d > 0 {
		return float64(r.Accepted) / d
	}
	return 0
}

// Failed is the number of requests that did not get a 202.
func (r *Report) Failed() int { return r.Requests - r.Accepted }

// Problems lists what makes the run fail: requests without a 202, missing
// events, events at the wrong user.
func (r *Report) Problems() []string {
	var p []string
	if n := r.Failed(); n > 0 {
		p = append(p, fmt.Sprintf("%s: %d of %d requests got no 202", r.Label, n, r.Requests))
	}
	if r.Missing > 0 {
		p = append(p, fmt.Sprintf("%s: %d events missing", r.Label, r.Missing))
	}
	if r.CrossUser > 0 {
		p = append(p, fmt.Sprintf("%s: %d events reached another user's socket", r.Label, r.CrossUser))
	}
	return p
}

func ms(d time.Duration) string {
	switch {
	case d >= time.Second || d <= -time.Second:
		return fmt.Sprintf("%.3fs", d.Seconds())
	case d >= time.Millisecond || d <= -time.Millisecond:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
	return d.Round(time.Microsecond).String()
}

func rate(n int, d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", float64(n)/d.Seconds())
}

// Print writes the report in the form test/load/README.md quotes.
func (r *Report) Print(w io.Writer) {
	el := r.End.Sub(r.Start)
	fmt.Fprintf(w, "%s: %d requests in %.2fs: %.1f uploads/s acknowledged (202: %d, assets %d)\n",
		r.Label, r.Requests, el.Seconds(), r.UploadRate(), r.Accepted, r.Assets)
	for _, s := range slices.Sorted(maps.Keys(r.ByStatus)) {
		if s == http.StatusAccepted {
			continue
		}
		fmt.Fprintf(w, "  status %d: %d  first body: %s\n", s, r.ByStatus[s], r.FirstBody[s])
	}
	for _, e := range slices.Sorted(maps.Keys(r.Transport)) {
		fmt.Fprintf(w, "  no reply (%s): %d\n", e, r.Transport[e])
	}
	if len(r.Submit) > 0 {
		fmt.Fprintf(w, "  submit latency  p50 %s  p90 %s  p99 %s  max %s\n",
			ms(percentile(r.Submit, 50)), ms(percentile(r.Submit, 90)), ms(percentile(r.Submit, 99)), ms(percentile(r.Submit, 100)))
	}
	if !r.Events {
		return
	}
	if r.Delivered > 0 {
		fmt.Fprintf(w, "  jobs/s %s (%d events, first upload → last event %.2fs); while uploading %s/s, after %s/s\n",
			rate(r.Delivered, r.LastEvent.Sub(r.Start)), r.Delivered, r.LastEvent.Sub(r.Start).Seconds(),
			rate(r.During, el), rate(r.Delivered-r.During, r.LastEvent.Sub(r.End)))
		fmt.Fprintf(w, "  end-to-end      p50 %s  p90 %s  p99 %s  max %s\n",
			ms(percentile(r.E2E, 50)), ms(percentile(r.E2E, 90)), ms(percentile(r.E2E, 99)), ms(percentile(r.E2E, 100)))
	}
	if len(r.Lag) > 0 {
		fmt.Fprintf(w, "  event lag       p50 %s  p99 %s  (received − processedAt; processedAt has ms precision)\n",
			ms(percentile(r.Lag, 50)), ms(percentile(r.Lag, 99)))
	}
	var extra []string
	if r.Unknown > 0 {
		extra = append(extra, fmt.Sprintf("unknown assets %d", r.Unknown))
	}
	if r.BadTime > 0 {
		extra = append(extra, fmt.Sprintf("unparsable processedAt %d", r.BadTime))
	}
	if r.Dropped > 0 {
		extra = append(extra, fmt.Sprintf("sockets dropped %d", r.Dropped))
	}
	fmt.Fprintf(w, "  events %d: missing %d  duplicate %d (repeats %d)  cross-user %d%s\n",
		r.Received, r.Missing, r.Duplicates, r.Repeats, r.CrossUser, prefixJoin("  ", extra))
	if p := r.Proc; p != nil {
		line := fmt.Sprintf("  server pid %d: peak RSS (VmHWM) %.1f MiB, CPU %.2fs", p.PID, float64(p.PeakRSS)/(1<<20), p.CPU.Seconds())
		if r.Accepted > 0 {
			line += fmt.Sprintf(" (%.2fs per 1,000 uploads)", p.CPU.Seconds()*1000/float64(r.Accepted))
		}
		fmt.Fprintln(w, line)
	}
}

func prefixJoin(sep string, s []string) string {
	if len(s) == 0 {
		return ""
	}
	return sep + strings.Join(s, sep)
}
