package ai_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/klectr/klectr/internal/ai"
)

// FuzzParseResponse checks, on any body: no panic; an accepted body comes
// out as a valid UTF-8 JSON object within the size and depth bounds, without
// NUL, that ParseResponse accepts unchanged and that means what the body
// meant; a refused one gets a permanent ai_bad_response or
// ai_response_too_large whose message is short printable UTF-8.
func FuzzParseResponse(f *testing.F) {
	for _, seed := range []string{
		// What AI services answer.
		`{"label": "Charizard", "set": "Base", "confidence": 0.93}`,
		`{"provider":"builtin","version":1,"format":"jpeg","width":150,"height":103,"pixels":true,` +
			`"dominantColors":[{"hex":"#1a2b3c","share":0.41}],"phash":"c3c3a5a5e1e1f0f0",` +
			`"sharpness":{"score":0.12,"threshold":0.05},"exposure":{"mean":0.48,"clipped":0.01},"verdict":"ok"}`,
		`{"category":"coin","attributes":{"year":1921,"mint":"D","grade":null},"tags":["silver","morgan"],"price":{"low":35.5,"high":1.2e2}}`,
		`{"名前":"ポケモンカード","emoji":"🃏","html":"<b>&amp;</b>","esc":"\u00e9\/\"\\"}`,
		// Hostile ones.
		"{\"label\":\"Pok\xe9mon\"}",
		"{\"\xc3\x28\":1}",
		`{"s":"\ud800\udc00\udfff"}`,
		`{"a":"x\u0000y"}`,
		nested(ai.MaxResultDepth),
		nested(ai.MaxResultDepth + 1),
		`{"a":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`,
		`{"error":"model overloaded"}`,
		`{"status":"ERROR"}`,
		`{"success":false}`,
		`{"error":null,"errors":[],"success":true}`,
		`{"a":1,"a":2}`,
		`{"n":1e400,"m":-0.0e-999}`,
		`{} {}`,
		"\xef\xbb\xbf{}",
		`[{"label":"card"}]`,
		`"card"`,
		`null`,
		``,
		`{"pad":"` + strings.Repeat("\u2028", 2000) + `"}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		out, err := ai.ParseResponse(body)
		if err != nil {
			var e *ai.Error
			if !errors.As(err, &e) || !e.Permanent || (e.Code != ai.CodeBadResponse && e.Code != ai.CodeResponseTooLarge) {
				t.Fatalf("refusal %#v; want a permanent *ai.Error with code %s or %s", err, ai.CodeBadResponse, ai.CodeResponseTooLarge)
			}
			msg := err.Error()
			if !utf8.ValidString(msg) || len(msg) > 400 || strings.ContainsFunc(msg, func(r rune) bool { return !unicode.IsPrint(r) }) {
				t.Fatalf("message is not short printable UTF-8: %q", msg)
			}
			if out != nil {
				t.Fatalf("refusal with a result: %q", out)
			}
			return
		}
		checkAccepted(t, out)
		var before, after any
		if err := json.Unmarshal(body, &before); err != nil {
			t.Fatalf("accepted a body encoding/json refuses: %v", err)
		}
		if err := json.Unmarshal(out, &after); err != nil || !reflect.DeepEqual(before, after) {
			t.Fatalf("the re-encoded result means something else:\n%q\n%q", body, out)
		}
	})
}
