package idempotency_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/klectr/klectr/internal/idempotency"
)

func TestParseKey(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("k", idempotency.MaxKeyLen)
	for _, tc := range []struct{ in, want string }{
		{`"8e03978e-40d5-43e8-bc93-6894a57f9324"`, "8e03978e-40d5-43e8-bc93-6894a57f9324"},
		{`8e03978e-40d5-43e8-bc93-6894a57f9324`, "8e03978e-40d5-43e8-bc93-6894a57f9324"},
		{` "a b" `, "a b"},
		{`"say \"hi\" \\ there"`, `say "hi" \ there`},
		{`"a,b;c"`, "a,b;c"},
		{long, long},
		{`"` + long + `"`, long},
	} {
		got, err := idempotency.ParseKey(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseKey(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{
		"", `""`, long + "k", `"` + long + `k"`,
		`"open`, `"a"b`, `"a\n"`, `"a\x"`, `"tab	"`, `"é"`,
		"a b", `a"b`, `a\b`, "a,b", "a;b", "é", "a\x00", "a\x7f",
	} {
		if got, err := idempotency.ParseKey(in); !errors.Is(err, idempotency.ErrInvalidKey) {
			t.Errorf("ParseKey(%q) = %q, %v; want ErrInvalidKey", in, got, err)
		}
	}
}

// The fingerprint changes with anything that changes the response: the
// user, a file's name, size or bytes, and the files' order.
func TestFingerprint(t *testing.T) {
	t.Parallel()
	a := idempotency.File{Name: "a.jpg", Size: 1, SHA256: "aa"}
	b := idempotency.File{Name: "b.jpg", Size: 2, SHA256: "bb"}
	base := idempotency.Fingerprint("u1", []idempotency.File{a, b})
	if again := idempotency.Fingerprint("u1", []idempotency.File{a, b}); again != base {
		t.Fatal("the same request has two fingerprints")
	}
	renamed, resized, rehashed := a, a, a
	renamed.Name, resized.Size, rehashed.SHA256 = "c.jpg", 3, "cc"
	for name, fp := range map[string]string{
		"user":    idempotency.Fingerprint("u2", []idempotency.File{a, b}),
		"order":   idempotency.Fingerprint("u1", []idempotency.File{b, a}),
		"name":    idempotency.Fingerprint("u1", []idempotency.File{renamed, b}),
		"size":    idempotency.Fingerprint("u1", []idempotency.File{resized, b}),
		"bytes":   idempotency.Fingerprint("u1", []idempotency.File{rehashed, b}),
		"a file":  idempotency.Fingerprint("u1", []idempotency.File{a}),
		"framing": idempotency.Fingerprint("u1", []idempotency.File{{Name: "a.jpg1", SHA256: "aa"}, b}),
	} {
		if fp == base {
			t.Errorf("a different %s gives the same fingerprint", name)
		}
	}
}
