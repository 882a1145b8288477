package httpapi

import (
	"io"
	"net/http"
	"time"
)

// boundBody bounds the time a request body may take: net/http has no read
// deadline of its own after the headers, and before replying it reads up to
// 256 KiB of a body the handler left unread, so a client that declares a
// body and trickles it would hold the connection (and its goroutine) for as
// long as it likes. Every body must arrive within Limits.BodyWindow; a
// handler that wants longer extends the connection's read deadline itself,
// as the upload does while its progress deadline is met. After the handler,
// net/http gets one more window to read the rest of an unread body (a client
// that sends its whole request before reading the reply must not see a
// reset), except on GET and HEAD, which take no body: that is not waited for.
//
// Requests without a body get no deadline: net/http's background read would
// cancel the context of a long poll when it passed.
func (s *Server) boundBody(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
		s.mux.ServeHTTP(w, r)
		return
	}
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(s.Limits.BodyWindow))
	orig := r.Body
	body := &eofReader{ReadCloser: orig}
	r.Body = body
	s.mux.ServeHTTP(w, r)
	// net/http inspects the original body's type to decide how much of it
	// to read after the handler.
	r.Body = orig
	if body.eof {
		return
	}
	// A hijacked connection refuses these calls.
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		// An expired deadline makes net/http's read of the rest fail at
		// once (bytes it has buffered still count): it replies and closes
		// the connection.
		_ = rc.SetReadDeadline(time.Now())
	} else {
		_ = rc.SetReadDeadline(time.Now().Add(s.Limits.BodyWindow))
	}
}

// eofReader records whether the body was read to its end.
type eofReader struct {
	io.ReadCloser
	eof bool
}

func (b *eofReader) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}
