package queue

import (
	"errors"
	"time"
)

// Permanent marks err as one that no retry can fix (a 4xx from the AI
// service, an undecodable image): the job goes dead after this attempt.
// Permanent(nil) is nil. The mark survives further wrapping with %w.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err, or an error it wraps, was marked by
// Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// RetryAfter marks err as retryable no earlier than d from now (a 429 or 503
// with Retry-After), overriding the Policy's delay for this attempt only. The
// attempt still counts: on the last attempt the job goes dead. d <= 0 means
// the Policy's delay. RetryAfter(nil, d) is nil. Permanent wins if both
// marks are present.
func RetryAfter(err error, d time.Duration) error {
	if err == nil {
		return nil
	}
	return &retryAfterError{err: err, d: d}
}

// RetryDelay returns the delay that RetryAfter put on err, if any. Backends
// use it; handlers have no need to.
func RetryDelay(err error) (time.Duration, bool) {
	var r *retryAfterError
	if !errors.As(err, &r) || r.d <= 0 {
		return 0, false
	}
	return r.d, true
}

type retryAfterError struct {
	err error
	d   time.Duration
}

func (e *retryAfterError) Error() string { return e.err.Error() }
func (e *retryAfterError) Unwrap() error { return e.err }

// Snooze puts the job back to wait, to run again no earlier than d from now
// (d <= 0: as soon as the backend fetches it), without counting this run as
// an attempt: the next delivery has the same Attempt, Info shows the job as
// it was before the run (pending if no attempt of it has failed, retrying
// otherwise) and this run records no error. A job may be snoozed any number
// of times; snoozing never makes it dead. It is for a handler that did not
// try the work (its dependency is known to be down), never for a failed
// attempt. err says why, for the log; it may be nil. Permanent wins if both
// marks are present.
func Snooze(err error, d time.Duration) error {
	if err == nil {
		err = errors.New("snoozed")
	}
	return &snoozeError{err: err, d: max(d, 0)}
}

// SnoozeDelay reports whether err, or an error it wraps, was made by Snooze,
// and the delay it asked for. Backends use it; handlers have no need to.
func SnoozeDelay(err error) (time.Duration, bool) {
	var s *snoozeError
	if !errors.As(err, &s) {
		return 0, false
	}
	return s.d, true
}

type snoozeError struct {
	err error
	d   time.Duration
}

func (e *snoozeError) Error() string { return e.err.Error() }
func (e *snoozeError) Unwrap() error { return e.err }
