// Package console is the web console served at /console/: static HTML, CSS
// and JavaScript embedded in the binary, with no build step and nothing
// fetched from elsewhere, so it works offline. It is a client of the public
// API like any other: it signs in with a bearer token the user pastes, keeps
// it in sessionStorage only, and calls /api/... and /socket.io/ on the same
// origin. The server, not the console, decides what a token may do.
package console

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var static embed.FS

// Handler serves the console's files; mount it at "GET /console/".
func Handler() http.Handler {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.StripPrefix("/console/", http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		// Only this origin's scripts, styles and API; images from the
		// browser's own object URLs (the thumbnails of the user's files).
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; "+
			"img-src 'self' blob: data:; connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		// The files change with the binary; revalidate instead of caching a
		// console that no longer matches the server it talks to.
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}
