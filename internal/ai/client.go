package ai

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"go.opentelemetry.io/otel/propagation"
)

// DefaultTimeout is the per-request timeout when ClientConfig.Timeout is unset
// (AI_TIMEOUT's default).
const DefaultTimeout = 30 * time.Second

// ClientConfig configures the AI service client.
type ClientConfig struct {
	// BaseURL is AI_SERVICE_URL: an http or https URL; requests go to
	// {BaseURL}/analyze (a path in BaseURL is kept as a prefix).
	BaseURL string
	// Token is AI_SERVICE_TOKEN, sent as "Authorization: Bearer {Token}" when
	// not empty. It never appears in errors or logs.
	Token string
	// Timeout bounds one request, from connecting until the response body is
	// read (AI_TIMEOUT). Zero or negative means DefaultTimeout.
	Timeout time.Duration
	// MaxConns is how many requests the caller may have in flight at once
	// (WORKER_CONCURRENCY): the default client keeps that many idle
	// connections to the service, so that every job reuses one instead of
	// dialling (http.DefaultTransport keeps 2 per host, and closes the rest
	// after each response). Zero or negative means 2.
	MaxConns int
	// HTTPClient sends the requests; nil means a client with its own clone of
	// http.DefaultTransport (MaxConns idle connections). Its redirect policy
	// is overridden: a redirect is returned as an unexpected status, because
	// a streamed body cannot be sent twice.
	HTTPClient *http.Client
	// Now reads the clock for Retry-After dates; nil means time.Now.
	Now func() time.Time
	// Logger receives a debug line per failed request with the full cause;
	// nil discards.
	Logger *slog.Logger
}

// Client is the Analyzer backed by the external AI service (DESIGN.md §5).
// It streams the image: memory per request is constant, whatever the size.
type Client struct {
	endpoint string
	token    string
	timeout  time.Duration
	hc       *http.Client
	now      func() time.Time
	log      *slog.Logger
}

var _ Analyzer = (*Client)(nil)

// errRequestTimeout is the cause of a request's own AI_TIMEOUT deadline, to
// tell it apart from the caller's context ending.
var errRequestTimeout = errors.New("ai: request timeout")

// errRequestDone stops the multipart writer once the exchange is over.
var errRequestDone = errors.New("ai: request finished")

// NewClient returns a Client for the AI service at cfg.BaseURL.
func NewClient(cfg ClientConfig) (*Client, error) {
	u, err := url.Parse(cfg.BaseURL)
	if err != nil {
		return nil, fmt.Errorf("ai: service URL: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("ai: service URL %q: want http://host[:port][/path] or https://…", u.Redacted())
	}
	u.RawQuery, u.Fragment = "", ""
	endpoint := u.JoinPath("analyze").String()

	t := http.DefaultTransport.(*http.Transport).Clone()
	// The image is streamed through a pipe into the connection's write
	// buffer: at the default 4 KiB, that is a write(2) per 4 KiB.
	t.WriteBufferSize = 64 << 10
	if cfg.MaxConns > t.MaxIdleConnsPerHost {
		t.MaxIdleConnsPerHost = cfg.MaxConns
		t.MaxIdleConns = max(t.MaxIdleConns, cfg.MaxConns)
	}
	hc := &http.Client{Transport: t}
	if cfg.HTTPClient != nil {
		c := *cfg.HTTPClient
		hc = &c
	}
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

	c := &Client{
		endpoint: endpoint,
		token:    cfg.Token,
		timeout:  cfg.Timeout,
		hc:       hc,
		now:      cfg.Now,
		log:      cfg.Logger,
	}
	if c.timeout <= 0 {
		c.timeout = DefaultTimeout
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// Analyze sends img to the AI service and returns its JSON object. See the
// package documentation for how failures are classified.
func (c *Client) Analyze(ctx context.Context, img Image) (json.RawMessage, error) {
	if img.Body == nil {
		return nil, &Error{Code: CodeInternal, Permanent: true, Message: "ai: image has no body"}
	}
	if ctx.Err() != nil {
		return nil, contextError(ctx)
	}
	parent := ctx
	ctx, cancel := context.WithTimeoutCause(ctx, c.timeout, errRequestTimeout)
	defer cancel()

	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	written := make(chan error, 1)
	go func() {
		err := writeForm(mw, img)
		pw.CloseWithError(err) // nil: the reader sees EOF
		written <- err
	}()
	// finish stops the writer (it may be blocked on a server that answered
	// without reading the whole body) and waits for it, so img.Body is never
	// read after Analyze returns. It yields the writer's error.
	finish := func() error {
		pr.CloseWithError(errRequestDone)
		err := <-written
		if errors.Is(err, errRequestDone) || errors.Is(err, io.ErrClosedPipe) {
			return nil
		}
		return err
	}

	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint, pr)
	if err != nil {
		finish()
		return nil, &Error{Code: CodeInternal, Permanent: true, Message: "ai: building the request failed", Err: err}
	}
	if overhead, ok := formOverhead(mw.Boundary(), img); ok && img.Size > 0 {
		// A known length spares the service a chunked upload, which some
		// servers and proxies refuse or buffer.
		req.ContentLength = overhead + img.Size
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	// The W3C traceparent of the caller's span, so that the service's own
	// spans join the asset's trace; nothing is sent without a span
	// (tracing off).
	propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(req.Header))

	start := c.now()
	resp, err := c.hc.Do(req)
	if err != nil {
		if werr := finish(); werr != nil {
			err = werr
		}
		return nil, c.fail(parent, img, start, c.transportError(parent, ctx, err))
	}
	result, err := c.readResponse(parent, ctx, resp)
	if werr := finish(); werr != nil && err == nil {
		// The service answered although the image could not be read in full:
		// its answer is about a different image than the stored one.
		err = readImageError(werr)
	}
	if err != nil {
		return nil, c.fail(parent, img, start, err)
	}
	return result, nil
}

func (c *Client) fail(ctx context.Context, img Image, start time.Time, err error) error {
	c.log.DebugContext(ctx, "ai service request failed",
		"assetId", img.AssetID,
		"code", Code(err),
		"permanent", IsPermanent(err),
		"elapsed", c.now().Sub(start),
		"err", errors.Unwrap(err))
	return err
}

// writeForm writes the assetId field first, so that a streaming server knows
// the asset before the image arrives, then the image part.
func writeForm(mw *multipart.Writer, img Image) error {
	if err := mw.WriteField("assetId", img.AssetID); err != nil {
		return err
	}
	ct := img.ContentType
	if ct == "" {
		ct = "application/octet-stream"
	}
	h := make(textproto.MIMEHeader)
	h.Set("Content-Disposition", mime.FormatMediaType("form-data", map[string]string{
		"name":     "image",
		"filename": img.AssetID + extension(img.ContentType),
	}))
	h.Set("Content-Type", ct)
	part, err := mw.CreatePart(h)
	if err != nil {
		return err
	}
	n, err := io.Copy(part, readerOnly{img.Body})
	if err != nil {
		if errors.Is(err, errRequestDone) || errors.Is(err, io.ErrClosedPipe) {
			return err
		}
		return &imageReadError{err}
	}
	if img.Size > 0 && n != img.Size {
		return &imageReadError{fmt.Errorf("the stored image is %d bytes, not the recorded %d", n, img.Size)}
	}
	return mw.Close()
}

// formOverhead is the length of everything writeForm sends but the image
// bytes, computed by writing the same form, without the image, with the same
// boundary.
func formOverhead(boundary string, img Image) (int64, bool) {
	var cw countingWriter
	mw := multipart.NewWriter(&cw)
	if err := mw.SetBoundary(boundary); err != nil {
		return 0, false
	}
	if err := writeForm(mw, Image{AssetID: img.AssetID, ContentType: img.ContentType, Body: strings.NewReader("")}); err != nil {
		return 0, false
	}
	return cw.n, true
}

type countingWriter struct{ n int64 }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return len(p), nil
}

// readerOnly hides a WriterTo/ReaderFrom so that io.Copy reads the image in
// bounded chunks instead of, say, handing the pipe to an *os.File.
type readerOnly struct{ io.Reader }

// imageReadError marks a failure to read the stored image, as opposed to a
// failure to write to the service.
type imageReadError struct{ err error }

func (e *imageReadError) Error() string { return "reading the stored image: " + e.err.Error() }
func (e *imageReadError) Unwrap() error { return e.err }

func readImageError(err error) error {
	return &Error{Code: CodeImageUnreadable, Message: "could not read the stored image", Err: err}
}

// transportError classifies a failed round trip; every case is retryable.
func (c *Client) transportError(parent, ctx context.Context, err error) error {
	var ire *imageReadError
	switch {
	case errors.As(err, &ire):
		return readImageError(err)
	case parent.Err() != nil:
		return contextError(parent)
	case errors.Is(context.Cause(ctx), errRequestTimeout):
		return &Error{Code: CodeTimeout, Message: fmt.Sprintf("AI service did not answer within %s", c.timeout), Err: err}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return &Error{Code: CodeTimeout, Message: "AI service timed out", Err: err}
	}
	return &Error{Code: CodeUnavailable, Message: "AI service unreachable: " + networkReason(err), Err: err}
}

// networkReason names a network failure without the addresses in err's text:
// the message reaches end users, who have no business with internal hosts.
func networkReason(err error) string {
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "connection reset"
	case errors.As(err, &dnsErr):
		return "host not found"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed before a response"
	case strings.Contains(err.Error(), "tls:") || strings.Contains(err.Error(), "x509:"):
		return "TLS handshake failed"
	}
	return "network error"
}

// readResponse turns the service's answer into the result or a classified
// error, and always leaves resp.Body drained (within limits) and closed.
func (c *Client) readResponse(parent, ctx context.Context, resp *http.Response) (json.RawMessage, error) {
	defer func() {
		// Draining lets the connection be reused; a body that goes on is
		// abandoned instead, which closes the connection.
		_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
		resp.Body.Close()
	}()

	if resp.StatusCode != http.StatusOK {
		return nil, c.statusError(resp)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxResultBytes+1))
	if err != nil {
		terr := c.transportError(parent, ctx, err)
		if e, ok := terr.(*Error); ok && e.Code == CodeUnavailable {
			e.Message = "AI service response was cut off: " + networkReason(err)
		}
		return nil, terr
	}
	return parseResponse(data, c.token) // MaxResultBytes+1 bytes are too large

}

// statusError classifies a non-200 answer.
func (c *Client) statusError(resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
	detail := ""
	if s := c.snippet(body); s != "" {
		detail = ": " + s
	}
	// The reason phrase is the service's own text: it may hold anything.
	status := snippet([]byte(resp.Status), c.token)
	if status == "" {
		status = strconv.Itoa(resp.StatusCode)
	}
	cause := fmt.Errorf("ai: POST /analyze: %s", status)
	code := resp.StatusCode
	switch {
	case code == http.StatusRequestTimeout:
		return &Error{Code: CodeTimeout, Message: "AI service timed out receiving the image (" + status + ")" + detail, Err: cause}
	case code == http.StatusTooManyRequests:
		d, _ := c.retryAfter(resp.Header.Get("Retry-After"))
		return &Error{Code: CodeRateLimited, Message: "AI service is rate limiting (" + status + ")" + detail, RetryAfter: d, Err: cause}
	case code >= 500:
		var d time.Duration
		if code == http.StatusServiceUnavailable {
			d, _ = c.retryAfter(resp.Header.Get("Retry-After"))
		}
		return &Error{Code: CodeUnavailable, Message: "AI service failed (" + status + ")" + detail, RetryAfter: d, Err: cause}
	case code >= 400:
		return &Error{Code: CodeRejected, Permanent: true, Message: "AI service rejected the image (" + status + ")" + detail, Err: cause}
	}
	return &Error{Code: CodeBadResponse, Permanent: true, Message: "AI service answered " + status + ", expected 200 OK", Err: cause}
}

// retryAfter parses a Retry-After value: delta-seconds or an HTTP date. It
// reports false for a missing or unparsable value and for a delay that is
// not in the future; the delay is capped at MaxRetryAfter.
func (c *Client) retryAfter(v string) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	var d time.Duration
	if strings.Trim(v, "0123456789") == "" {
		// delay-seconds is 1*DIGIT (RFC 9110 §10.2.3): no sign, which
		// ParseInt would take, nor a negative count whose product with
		// time.Second wraps around to a long positive delay.
		secs, err := strconv.ParseUint(v, 10, 64)
		if err != nil || secs > uint64(MaxRetryAfter/time.Second) {
			return MaxRetryAfter, true // too many digits for a uint64 is still a long delay
		}
		d = time.Duration(secs) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(c.now())
	} else {
		return 0, false
	}
	if d <= 0 {
		return 0, false
	}
	return min(d, MaxRetryAfter), true
}

// snippet renders the start of a remote body for a user-facing message: one
// line of printable text, at most maxSnippet bytes, the token redacted.
const maxSnippet = 200

func (c *Client) snippet(body []byte) string { return snippet(body, c.token) }

func snippet(body []byte, token string) string {
	text := string(body)
	if token != "" {
		text = strings.ReplaceAll(text, token, "[redacted]")
	}
	return printable(text, maxSnippet)
}

// printable renders text as one line of printable UTF-8 of at most max bytes
// (plus an ellipsis when cut): invalid bytes, control and format characters
// (bidi overrides, NUL, escapes) and runs of space become one space.
func printable(text string, max int) string {
	var b strings.Builder
	space := false
	for _, r := range text {
		if r == utf8.RuneError || unicode.IsSpace(r) || !unicode.IsPrint(r) {
			space = b.Len() > 0
			continue
		}
		if space {
			b.WriteByte(' ')
			space = false
		}
		if b.Len()+utf8.RuneLen(r) > max {
			b.WriteString("…")
			break
		}
		b.WriteRune(r)
	}
	return b.String()
}
