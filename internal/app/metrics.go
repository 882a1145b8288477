package app

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/klectr/klectr/internal/asset"
	"github.com/klectr/klectr/internal/pipeline"
	"github.com/klectr/klectr/internal/queue"
)

// metrics is the process's Prometheus registry (no global registry).
//
// The stage histograms follow an asset through the pipeline (README,
// "Operations"; deploy/grafana/klectr.json); each is observed by the
// process that does the step, so in a scale-out deployment the api
// processes export ack and the workers the rest:
//
//	klectr_ack_seconds                       upload request → 202 (the assets and jobs durable)
//	klectr_queue_wait_seconds                job enqueued → its first attempt began
//	klectr_ai_call_seconds{outcome}          one attempt's analysis (image read and AI call)
//	klectr_ai_outcomes_total{outcome}        attempts by outcome, breaker_open included (no call)
//	klectr_end_to_end_seconds{status}        upload request → final state stored (draft, failed)
//	klectr_event_lag_seconds                 final state stored → asset_processed published
//	klectr_job_attempts{status}              attempts a finished job took
type metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.HistogramVec

	ack, queueWait, eventLag prometheus.Histogram
	aiCall, endToEnd         *prometheus.HistogramVec
	attempts                 *prometheus.HistogramVec
	aiOutcomes               *prometheus.CounterVec
}

// uploadRoute is the pattern whose 202s klectr_ack_seconds measures.
const uploadRoute = "POST /api/assets/analyze-queue"

var _ pipeline.Observer = (*metrics)(nil)

func newMetrics(counts func(context.Context) (map[queue.State]int, error), sockets func() int) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "klectr_http_request_duration_seconds",
			Help:    "HTTP requests by route pattern and status.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"route", "code"}),
	}
	hist := func(name, help string, buckets []float64) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets})
	}
	histVec := func(name, help string, buckets []float64, label string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, []string{label})
	}
	// Each set has a bound at its SLO target (2 s, 60 s, 1 s), so that a
	// ratio of buckets reads the target's share exactly.
	m.ack = hist("klectr_ack_seconds", "Upload request received to its 202 (assets and jobs durable).",
		[]float64{.005, .01, .025, .05, .1, .25, .5, 1, 2, 5, 10})
	m.queueWait = hist("klectr_queue_wait_seconds", "Job enqueued to its first attempt's start.",
		[]float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600})
	m.aiCall = histVec("klectr_ai_call_seconds", "One attempt's analysis (image read and AI call), by outcome.",
		[]float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 20, 30, 60}, "outcome")
	m.endToEnd = histVec("klectr_end_to_end_seconds", "Upload request received to the asset's final state stored, by final status.",
		[]float64{.1, .25, .5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 300, 600}, "status")
	m.eventLag = hist("klectr_event_lag_seconds", "Final state stored to its asset_processed event published.",
		[]float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 60})
	m.attempts = histVec("klectr_job_attempts", "Attempts a job took to reach its asset's final state, by final status.",
		[]float64{1, 2, 3, 4, 5, 6, 8, 10}, "status")
	m.aiOutcomes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "klectr_ai_outcomes_total",
		Help: "Attempts' analyses by outcome: ok, retryable, permanent, breaker_open (not sent, job snoozed), canceled."},
		[]string{"outcome"})
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), m.requests,
		m.ack, m.queueWait, m.aiCall, m.endToEnd, m.eventLag, m.attempts, m.aiOutcomes)
	if counts != nil {
		m.reg.MustRegister(queueCollector{counts: counts, desc: prometheus.NewDesc("klectr_queue_jobs",
			"Jobs of the ai-processing queue by state.", []string{"state"}, nil)})
	}
	if sockets != nil {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "klectr_realtime_sockets", Help: "Socket.IO sockets connected to this process.",
		}, func() float64 { return float64(sockets()) }))
	}
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// instrument records every request under its route pattern (never the raw
// path, which holds ids), after the mux has set r.Pattern.
func (m *metrics) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(sw, r)
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		took := time.Since(start).Seconds()
		m.requests.WithLabelValues(route, strconv.Itoa(sw.code)).Observe(took)
		if route == uploadRoute && sw.code == http.StatusAccepted {
			m.ack.Observe(took)
		}
	})
}

// QueueWait implements pipeline.Observer.
func (m *metrics) QueueWait(d time.Duration) { m.queueWait.Observe(d.Seconds()) }

// AICall implements pipeline.Observer; took 0 is no call (breaker open).
func (m *metrics) AICall(outcome string, took time.Duration) {
	m.aiOutcomes.WithLabelValues(outcome).Inc()
	if took > 0 {
		m.aiCall.WithLabelValues(outcome).Observe(took.Seconds())
	}
}

// Finished implements pipeline.Observer.
func (m *metrics) Finished(a *asset.Asset) {
	m.attempts.WithLabelValues(string(a.Status)).Observe(float64(a.Attempts))
	if a.ReceivedAt != nil && a.ProcessedAt != nil {
		m.endToEnd.WithLabelValues(string(a.Status)).Observe(a.ProcessedAt.Sub(*a.ReceivedAt).Seconds())
	}
}

// EventSent implements pipeline.Observer.
func (m *metrics) EventSent(lag time.Duration) { m.eventLag.Observe(lag.Seconds()) }

type statusWriter struct {
	http.ResponseWriter
	code        int
	wroteHeader bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.code, w.wroteHeader = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection (read deadlines
// of the upload, websocket hijacking).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// queueCollector reads the queue's counts at scrape time.
type queueCollector struct {
	counts func(context.Context) (map[queue.State]int, error)
	desc   *prometheus.Desc
}

func (c queueCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c queueCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	counts, err := c.counts(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	for _, s := range queue.States() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(counts[s]), string(s))
	}
}
