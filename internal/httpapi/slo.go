package httpapi

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/klectr/klectr/internal/slo"
)

// SLO report bounds: the window, and the sample (the newest runs of the
// window, so that one report reads a bounded number of rows however busy
// the service was).
const (
	sloDefaultWindow = time.Hour
	sloMinWindow     = time.Minute
	sloMaxWindow     = 7 * 24 * time.Hour
	sloSampleLimit   = 10_000
)

// adminSLO is GET /api/admin/slo?window=1h: the plan's targets measured
// over the assets received in the window, read from the store (the same
// answer from every api process of a deployment).
func (s *Server) adminSLO(w http.ResponseWriter, r *http.Request) {
	window := sloDefaultWindow
	if v := r.URL.Query().Get("window"); v != "" {
		d, err := parseWindow(v)
		if err != nil || d < sloMinWindow || d > sloMaxWindow {
			e := errorf(codeBadRequest, "window must be a duration from 1m to 7d, such as 15m, 1h or 7d")
			e.Field = "window"
			s.writeError(w, r, e)
			return
		}
		window = d
	}
	now := s.Now()
	from := now.Add(-window)
	// One more than the limit tells whether the window held more.
	tls, err := s.Timelines.Timelines(r.Context(), from, sloSampleLimit+1)
	if err != nil {
		s.writeError(w, r, internalError(codeUnavailable, err))
		return
	}
	truncated := len(tls) > sloSampleLimit
	if truncated {
		tls = tls[:sloSampleLimit]
	}
	body := map[string]any{
		"window":        window.String(),
		"windowSeconds": window.Seconds(),
		"from":          rfc3339(from),
		"to":            rfc3339(now),
		"sampleLimit":   sloSampleLimit,
		"sampled":       len(tls),
		"truncated":     truncated,
		"objectives":    slo.Measure(tls, now),
		"stages":        slo.Stages(tls),
	}
	if truncated {
		body["note"] = "the window held more runs than sampleLimit; the report covers the newest " + strconv.Itoa(sloSampleLimit)
	}
	writeJSON(w, http.StatusOK, body)
}

// parseWindow is time.ParseDuration that also takes whole days ("7d").
func parseWindow(v string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(v, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil || days < 1 || days > 7 {
			return 0, strconv.ErrRange
		}
		return time.Duration(days) * 24 * time.Hour, nil
	}
	return time.ParseDuration(v)
}
