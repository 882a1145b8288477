package httpapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Error codes of the contract (DESIGN §2, api/openapi.yaml).
const (
	codeUnauthorized   = "unauthorized"
	codeForbidden      = "forbidden"
	codeNoFiles        = "no_files"
	codeTooManyFiles   = "too_many_files"
	codeBadRequest     = "bad_request"
	codeFileTooLarge   = "file_too_large"
	codeUnsupported    = "unsupported_media_type"
	codeInvalidImage   = "invalid_image"
	codeNotFound       = "not_found"
	codeConflict       = "conflict"
	codeKeyReused      = "idempotency_key_reused"
	codeUnknownEvent   = "unknown_event"
	codeRateLimited    = "rate_limited"
	codeRequestTimeout = "request_timeout"
	codeUnavailable    = "unavailable"
	codeInternal       = "internal"
)

var codeStatus = map[string]int{
	codeUnauthorized:   http.StatusUnauthorized,
	codeForbidden:      http.StatusForbidden,
	codeNoFiles:        http.StatusBadRequest,
	codeTooManyFiles:   http.StatusBadRequest,
	codeBadRequest:     http.StatusBadRequest,
	codeFileTooLarge:   http.StatusRequestEntityTooLarge,
	codeUnsupported:    http.StatusUnsupportedMediaType,
	codeInvalidImage:   http.StatusUnprocessableEntity,
	codeNotFound:       http.StatusNotFound,
	codeConflict:       http.StatusConflict,
	codeKeyReused:      http.StatusUnprocessableEntity,
	codeUnknownEvent:   http.StatusGone,
	codeRateLimited:    http.StatusTooManyRequests,
	codeRequestTimeout: http.StatusRequestTimeout,
	codeUnavailable:    http.StatusServiceUnavailable,
	codeInternal:       http.StatusInternalServerError,
}

// apiError is a reply in the contract's error shape.
type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
	Index   *int   `json:"index,omitempty"`

	retryAfter time.Duration
	cause      error // logged for 5xx, never sent
}

func (e *apiError) Error() string { return e.Code + ": " + e.Message }

func errorf(code, format string, args ...any) *apiError {
	return &apiError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// fileError is an error about the file at index of field "images".
func fileError(index int, code, format string, args ...any) *apiError {
	e := errorf(code, format, args...)
	e.Field, e.Index = "images", &index
	return e
}

// internalError hides cause from the client and logs it.
func internalError(code string, cause error) *apiError {
	msg := "the service cannot take this request right now; nothing was accepted, try again"
	if code == codeInternal {
		msg = "internal error"
	}
	return &apiError{Code: code, Message: msg, cause: cause}
}

// writeJSON writes v with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// writeRawJSON writes body, JSON already encoded, with status.
func writeRawJSON(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	w.Write(body)
}

// writeError writes e in the contract's shape; 5xx are logged with the
// request's method and route and the hidden cause.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, e *apiError) {
	status, ok := codeStatus[e.Code]
	if !ok {
		status = http.StatusInternalServerError
	}
	if status >= 500 {
		s.log.ErrorContext(r.Context(), "request failed", "method", r.Method, "route", r.Pattern, "status", status, "code", e.Code, "err", e.cause)
	}
	if e.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((e.retryAfter+time.Second-1)/time.Second)))
	}
	writeJSON(w, status, map[string]*apiError{"error": e})
}
