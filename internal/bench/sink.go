package bench

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"time"
)

// sinkMaxBody bounds one request the sink reads.
const sinkMaxBody = 64 << 20

// sinkHandler is the bare multipart sink of -baseline: it parses the body
// with MultipartReader, discards every part and answers 202. It is the most
// an HTTP upload endpoint can do on this machine with net/http, which makes
// it the denominator of issue 9's target 1.
func sinkHandler(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, sinkMaxBody)
	mr, err := r.MultipartReader()
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err == nil {
			_, err = io.Copy(io.Discard, p)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	io.WriteString(w, `{"assets":[]}`)
}

// startSink serves sinkHandler on a free loopback port until stop is called.
func startSink() (base string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(sinkHandler), ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln) // ends with ErrServerClosed
	}()
	return "http://" + ln.Addr().String(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}, nil
}
