package ai_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/klectr/klectr/internal/ai"
)

func TestPermanentKeepsCauseAndCode(t *testing.T) {
	t.Parallel()
	if ai.Permanent(nil) != nil {
		t.Fatal("Permanent(nil) != nil")
	}
	cause := &ai.Error{Code: ai.CodeImageUndecodable, Message: "broken pixels", Err: io.ErrUnexpectedEOF}
	if ai.IsPermanent(cause) {
		t.Fatal("an *Error without Permanent is permanent")
	}
	err := fmt.Errorf("job 7: %w", ai.Permanent(cause))
	if !ai.IsPermanent(err) {
		t.Error("IsPermanent(wrapped Permanent(err)) = false")
	}
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Error("errors.Is does not see the cause through Permanent")
	}
	var e *ai.Error
	if !errors.As(err, &e) {
		t.Error("errors.As finds no *Error")
	}
	if got := ai.Code(err); got != ai.CodeImageUndecodable {
		t.Errorf("Code = %q, want the cause's %q", got, ai.CodeImageUndecodable)
	}
	if got := ai.Code(ai.Permanent(errors.New("plain"))); got != ai.CodeInternal {
		t.Errorf("Code(Permanent(plain)) = %q, want %q", got, ai.CodeInternal)
	}
}

func TestCodeAndRetryAfterOfForeignErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		code string
	}{
		{nil, ""},
		{errors.New("x"), ai.CodeInternal},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), ai.CodeTimeout},
		{context.Canceled, ai.CodeCanceled},
	} {
		if got := ai.Code(tc.err); got != tc.code {
			t.Errorf("Code(%v) = %q, want %q", tc.err, got, tc.code)
		}
		if ai.IsPermanent(tc.err) {
			t.Errorf("IsPermanent(%v) = true; foreign errors are retryable", tc.err)
		}
		if d, ok := ai.RetryAfter(tc.err); ok {
			t.Errorf("RetryAfter(%v) = %v; want none", tc.err, d)
		}
	}
}

func TestRetryAfterThroughWrapping(t *testing.T) {
	t.Parallel()
	inner := &ai.Error{Code: ai.CodeRateLimited, RetryAfter: 3 * time.Second}
	for _, err := range []error{
		inner,
		fmt.Errorf("attempt 2: %w", inner),
		&ai.Error{Code: ai.CodeRateLimited, Err: inner}, // an outer *Error without a delay
	} {
		if d, ok := ai.RetryAfter(err); !ok || d != 3*time.Second {
			t.Errorf("RetryAfter(%v) = %v, %v; want 3s", err, d, ok)
		}
	}
	if d, _ := ai.RetryAfter(&ai.Error{RetryAfter: time.Hour}); d != ai.MaxRetryAfter {
		t.Errorf("RetryAfter of an hour = %v; want the cap %v", d, ai.MaxRetryAfter)
	}
}

// TestUserMessageShowsOnlyTextWrittenForUsers: the asset's error message
// comes from UserMessage, so the text of a store's, queue's or library's
// error (SQL, file paths, hosts) must never come out of it.
func TestUserMessageShowsOnlyTextWrittenForUsers(t *testing.T) {
	t.Parallel()
	sqlErr := errors.New("sqlite: CHECK constraint failed: ai_metadata IS NULL OR json_valid(ai_metadata)")
	long := strings.Repeat("é", 400)
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"message", &ai.Error{Code: ai.CodeRejected, Message: "AI service rejected the image (400)", Err: sqlErr}, "AI service rejected the image (400)"},
		{"permanent keeps the inner message", ai.Permanent(&ai.Error{Code: ai.CodeTimeout, Message: "AI service timed out"}), "AI service timed out"},
		{"wrapped", fmt.Errorf("job 7: %w", &ai.Error{Code: ai.CodeTimeout, Message: "AI service timed out"}), "AI service timed out"},
		{"plain error", sqlErr, "the analysis failed"},
		{"wrapped plain error", fmt.Errorf("record outcome: %w", sqlErr), "the analysis failed"},
		{"permanent plain error", ai.Permanent(sqlErr), "the analysis failed"},
		{"no message, cause with text", &ai.Error{Code: ai.CodeInternal, Err: sqlErr}, "the analysis failed"},
		{"unprintable message", &ai.Error{Message: "bad\xff\x00\x1b[31m\u202e answer"}, "bad [31m answer"},
		{"nothing printable", &ai.Error{Message: "\x00\xff"}, "the analysis failed"},
		{"long message", &ai.Error{Message: long}, strings.Repeat("é", 150) + "…"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := ai.UserMessage(tc.err); got != tc.want {
				t.Errorf("UserMessage = %q, want %q", got, tc.want)
			}
		})
	}
}
