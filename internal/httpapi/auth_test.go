package httpapi_test

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/klectr/klectr/internal/auth"
)

// signed mints a token with any method and claims, as an attacker or a
// misconfigured client could.
func signed(t *testing.T, m jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(m, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// badTokens are Authorization headers that must all get the same 401.
func badTokens(t *testing.T) map[string]string {
	t.Helper()
	exp := time.Now().Add(time.Hour).Unix()
	expired, err := auth.NewKeys([]byte(testSecret), func() time.Time { return time.Now().Add(-2 * time.Hour) }).
		Sign("u1", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	wrongSecret, err := auth.NewKeys([]byte("another-secret-another-secret-00"), nil).Sign("u1", "admin", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	good, err := auth.NewKeys([]byte(testSecret), nil).Sign("u1", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]string{
		"missing":              "",
		"basic scheme":         "Basic dTE6cGFzc3dvcmQ=",
		"bearer, no token":     "Bearer ",
		"malformed":            "Bearer not-a-jwt",
		"three garbage":        "Bearer a.b.c",
		"token without scheme": good,
		"expired":              "Bearer " + expired,
		"wrong secret":         "Bearer " + wrongSecret,
		"alg none":             "Bearer " + signed(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, jwt.MapClaims{"sub": "u1", "exp": exp, "role": "admin"}),
		"HS512, right secret":  "Bearer " + signed(t, jwt.SigningMethodHS512, []byte(testSecret), jwt.MapClaims{"sub": "u1", "exp": exp}),
		"HS384, right secret":  "Bearer " + signed(t, jwt.SigningMethodHS384, []byte(testSecret), jwt.MapClaims{"sub": "u1", "exp": exp}),
		"no exp":               "Bearer " + signed(t, jwt.SigningMethodHS256, []byte(testSecret), jwt.MapClaims{"sub": "u1"}),
		"no sub":               "Bearer " + signed(t, jwt.SigningMethodHS256, []byte(testSecret), jwt.MapClaims{"exp": exp}),
		"tampered payload":     "Bearer " + tamper(t, good),
	}
}

// tamper swaps the payload of a valid token for one naming another user,
// keeping the signature.
func tamper(t *testing.T, token string) string {
	t.Helper()
	parts := strings.Split(token, ".")
	other := signed(t, jwt.SigningMethodHS256, []byte("x"), jwt.MapClaims{"sub": "u2", "exp": time.Now().Add(time.Hour).Unix()})
	parts[1] = strings.Split(other, ".")[1]
	return strings.Join(parts, ".")
}

// TestUnauthorized: every protected route answers a bad token with 401
// unauthorized and a WWW-Authenticate challenge, and does nothing else.
func TestUnauthorized(t *testing.T) {
	t.Parallel()
	routes := []struct{ method, path string }{
		{"POST", "/api/assets/analyze-queue"},
		{"GET", "/api/assets"},
		{"GET", "/api/assets/01JAAAAAAAAAAAAAAAAAAAAAAA"},
		{"POST", "/api/assets/01JAAAAAAAAAAAAAAAAAAAAAAA/retry"},
		{"GET", "/api/admin/queues"},
		{"GET", "/api/admin/jobs"},
		{"GET", "/api/admin/jobs/01JAAAAAAAAAAAAAAAAAAAAAAA"},
		{"POST", "/api/admin/jobs/01JAAAAAAAAAAAAAAAAAAAAAAA/retry"},
		{"DELETE", "/api/admin/jobs/01JAAAAAAAAAAAAAAAAAAAAAAA"},
	}
	for name, header := range badTokens(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			for _, rt := range routes {
				var body []byte
				if rt.path == "/api/assets/analyze-queue" {
					body = multipartBody(t, false, files(t, "valid/basn0g01.png")...)
				}
				req := e.request(t, rt.method, rt.path, "", bytes.NewReader(body))
				if header != "" {
					req.Header.Set("Authorization", header)
				}
				req.Header.Set("Content-Type", multipartType)
				r := e.do(t, req, doOptions{noRequestCheck: true})
				r.wantError(t, http.StatusUnauthorized, "unauthorized")
				if got := r.Header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") {
					t.Errorf("%s %s: WWW-Authenticate %q", rt.method, rt.path, got)
				}
			}
			e.wantNothingKept(t)
			if e.intake.calls() > 0 || len(e.assets.listCalls()) > 0 || len(e.limiter.asked()) > 0 || len(e.jobs.listCalls()) > 0 {
				t.Errorf("an unauthenticated request reached a backend")
			}
			if tok := strings.TrimPrefix(header, "Bearer "); len(tok) > 20 && strings.Contains(e.logs.String(), tok) {
				t.Errorf("a token was logged")
			}
		})
	}
}

// TestAuthAcceptsAValidToken is the control of TestUnauthorized: the same
// secret, HS256, a future exp and a sub pass, with "Bearer" in any case.
func TestAuthAcceptsAValidToken(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, scheme := range []string{"Bearer ", "bearer "} {
		req := e.request(t, "GET", "/api/assets", "", nil)
		req.Header.Set("Authorization", scheme+e.token(t, "u1", ""))
		if r := e.do(t, req, doOptions{noRequestCheck: scheme != "Bearer "}); r.StatusCode != http.StatusOK {
			t.Errorf("%q: status %d: %s", scheme, r.StatusCode, r.Body)
		}
	}
	tok := signed(t, jwt.SigningMethodHS256, []byte(testSecret), jwt.MapClaims{"sub": "u3", "exp": time.Now().Add(time.Minute).Unix()})
	if r := e.get(t, "/api/assets", tok); r.StatusCode != http.StatusOK {
		t.Errorf("a hand-made HS256 token: status %d: %s", r.StatusCode, r.Body)
	}
	calls := e.assets.listCalls()
	if len(calls) != 3 || calls[2].UserID != "u3" {
		t.Errorf("List calls %+v, want the last for u3", calls)
	}
}
