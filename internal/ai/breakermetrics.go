package ai

import "github.com/prometheus/client_golang/prometheus"

// BreakerCollector exports b's state to Prometheus, read at scrape time:
//
//	klectr_ai_breaker_state{state="closed|open|half-open"}          1 for the current state, 0 for the others
//	klectr_ai_breaker_consecutive_failures                           outage failures in a row
//	klectr_ai_breaker_transitions_total{to="closed|open|half-open"}  transitions since start
//	klectr_ai_breaker_deferred_total                                 requests not sent because it was open
func BreakerCollector(b *Breaker) prometheus.Collector { return breakerCollector{b} }

var (
	breakerStateDesc = prometheus.NewDesc("klectr_ai_breaker_state",
		"AI service circuit breaker: 1 for its current state.", []string{"state"}, nil)
	breakerFailuresDesc = prometheus.NewDesc("klectr_ai_breaker_consecutive_failures",
		"AI service failures in a row (down, unreachable, too slow, overloaded).", nil, nil)
	breakerTransitionsDesc = prometheus.NewDesc("klectr_ai_breaker_transitions_total",
		"AI service circuit breaker transitions, by the state entered.", []string{"to"}, nil)
	breakerDeferredDesc = prometheus.NewDesc("klectr_ai_breaker_deferred_total",
		"Analyses not sent to the AI service because its circuit breaker was open; their jobs waited.", nil, nil)
)

type breakerCollector struct{ b *Breaker }

func (c breakerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- breakerStateDesc
	ch <- breakerFailuresDesc
	ch <- breakerTransitionsDesc
	ch <- breakerDeferredDesc
}

func (c breakerCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.b.State()
	for _, st := range []string{BreakerClosed, BreakerOpen, BreakerHalfOpen} {
		v := 0.0
		if s.State == st {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(breakerStateDesc, prometheus.GaugeValue, v, st)
		ch <- prometheus.MustNewConstMetric(breakerTransitionsDesc, prometheus.CounterValue, float64(s.Transitions[st]), st)
	}
	ch <- prometheus.MustNewConstMetric(breakerFailuresDesc, prometheus.GaugeValue, float64(s.ConsecutiveFailures))
	ch <- prometheus.MustNewConstMetric(breakerDeferredDesc, prometheus.CounterValue, float64(s.Deferred))
}
