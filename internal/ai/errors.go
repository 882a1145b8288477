package ai

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Error codes, copied by the worker into the asset's error.code. They are part
// of the API contract: clients may branch on them, so they never change
// meaning.
const (
	CodeUnavailable      = "ai_unavailable"        // AI service unreachable or 5xx
	CodeTimeout          = "ai_timeout"            // no answer within AI_TIMEOUT, or 408
	CodeRateLimited      = "ai_rate_limited"       // 429
	CodeRejected         = "ai_rejected"           // AI service refused the request (4xx)
	CodeBadResponse      = "ai_bad_response"       // 200 that ParseResponse refuses, or an unexpected status
	CodeResponseTooLarge = "ai_response_too_large" // result over MaxResultBytes
	CodeCanceled         = "ai_canceled"           // the caller's context was canceled
	CodeImageUndecodable = "image_undecodable"     // header or pixel data broken
	CodeImageUnsupported = "image_unsupported"     // not a format this analyzer reads
	CodeImageTooLarge    = "image_too_large"       // over the analyzer's byte or pixel limit
	CodeImageUnreadable  = "image_unreadable"      // reading the stored bytes failed
	CodeInternal         = "ai_error"              // any error this package did not classify
)

// MaxRetryAfter caps the delay a service may ask for with Retry-After.
const MaxRetryAfter = 5 * time.Minute

// Error is a classified analysis failure. The package returns *Error for every
// failure it classifies; callers may build their own (e.g. in tests).
type Error struct {
	// Code is one of the Code* constants.
	Code string
	// Message is shown to the uploader; it must hold no secret and no more than
	// a short snippet of a remote body. Err's text is never shown: when no
	// *Error in the chain has a Message, UserMessage gives a generic one.
	Message string
	// Permanent means retrying cannot help.
	Permanent bool
	// RetryAfter is the delay the service asked for (0 when it asked none),
	// already capped at MaxRetryAfter.
	RetryAfter time.Duration
	// Err is the cause, for errors.Is/As and for logs.
	Err error
}

func (e *Error) Error() string {
	switch {
	case e.Message != "":
		return e.Message
	case e.Err != nil:
		return e.Err.Error()
	}
	return e.Code
}

func (e *Error) Unwrap() error { return e.Err }

// Permanent marks err permanent, keeping its code and its cause visible to
// errors.Is and errors.As. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &Error{Code: Code(err), Permanent: true, Err: err}
}

// IsPermanent reports whether retrying err cannot help. The outermost *Error
// in err's chain decides; an error with no *Error in its chain is retryable.
func IsPermanent(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Permanent
}

// RetryAfter reports the delay the AI service asked for (429 or 503 with a
// Retry-After header), capped at MaxRetryAfter. It reports false when the
// service asked for none, or for none in the future, so that the worker's own
// backoff applies.
func RetryAfter(err error) (time.Duration, bool) {
	for err != nil {
		var e *Error
		if !errors.As(err, &e) {
			return 0, false
		}
		if e.RetryAfter > 0 {
			return min(e.RetryAfter, MaxRetryAfter), true
		}
		err = e.Err
	}
	return 0, false
}

// Code returns err's error code: the outermost *Error's Code, ai_timeout or
// ai_canceled for a bare context error, ai_error for anything else, and ""
// for nil.
func Code(err error) string {
	var e *Error
	switch {
	case err == nil:
		return ""
	case errors.As(err, &e) && e.Code != "":
		return e.Code
	case errors.Is(err, context.DeadlineExceeded):
		return CodeTimeout
	case errors.Is(err, context.Canceled):
		return CodeCanceled
	}
	return CodeInternal
}

// maxUserMessage bounds the text UserMessage returns.
const maxUserMessage = 300

// UserMessage returns the text to show the uploader for err: the Message of
// the outermost *Error in err's chain that has one, or a generic sentence.
// It never returns the text of an error this package did not write for users
// (a store's, a queue's, a library's), and what it returns is one line of
// printable UTF-8 of at most 300 bytes, whatever a Message holds.
func UserMessage(err error) string {
	for e := (*Error)(nil); errors.As(err, &e); err = e.Err {
		if e.Message != "" {
			if m := printable(e.Message, maxUserMessage); m != "" {
				return m
			}
			break
		}
	}
	return "the analysis failed"
}

// contextError classifies the end of the caller's ctx: retryable, because the
// job did not fail, it was interrupted (shutdown, or the job's own deadline).
func contextError(ctx context.Context) error {
	err := ctx.Err()
	if cause := context.Cause(ctx); cause != nil && cause != err {
		err = fmt.Errorf("%w: %w", err, cause)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &Error{Code: CodeTimeout, Message: "analysis interrupted: deadline exceeded", Err: err}
	}
	return &Error{Code: CodeCanceled, Message: "analysis interrupted: canceled", Err: err}
}
