package ai_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/klectr/klectr/internal/ai"
)

// nested is an object holding depth objects in all, the innermost empty.
func nested(depth int) string {
	return strings.Repeat(`{"a":`, depth-1) + "{}" + strings.Repeat("}", depth-1)
}

// checkAccepted asserts what every accepted result must be: a valid UTF-8
// JSON object within the bounds, that ParseResponse accepts unchanged.
func checkAccepted(t *testing.T, out []byte) {
	t.Helper()
	if !utf8.Valid(out) || !json.Valid(out) || len(out) == 0 || out[0] != '{' {
		t.Fatalf("accepted result is not a valid UTF-8 JSON object: %q", out)
	}
	if len(out) > ai.MaxResultBytes {
		t.Fatalf("accepted result is %d bytes, over the %d cap", len(out), ai.MaxResultBytes)
	}
	if bytes.IndexByte(out, 0) >= 0 || bytes.Contains(out, []byte(`\u0000`)) {
		t.Fatalf("accepted result holds a NUL: %q", out)
	}
	if d := depth(out); d > ai.MaxResultDepth {
		t.Fatalf("accepted result nests %d deep", d)
	}
	again, err := ai.ParseResponse(out)
	if err != nil || !bytes.Equal(again, out) {
		t.Fatalf("re-validating the result gives %q, %v; want it unchanged: %q", again, err, out)
	}
}

// depth is the nesting depth of valid JSON.
func depth(data []byte) int {
	dec := json.NewDecoder(bytes.NewReader(data))
	d, deepest := 0, 0
	for {
		tok, err := dec.Token()
		if err != nil {
			return deepest
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			d++
			deepest = max(deepest, d)
		case json.Delim('}'), json.Delim(']'):
			d--
		}
	}
}

func TestParseResponseAccepts(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, body, want string }{
		{"compact object", `{"label":"card","score":0.93}`, `{"label":"card","score":0.93}`},
		{"whitespace dropped, key order and number text kept",
			" {\n \"b\" : [1, 2.5E3, -0, true, false, null],\t\"a\": {\"x\": \"y\"} }\r\n",
			`{"b":[1,2.5E3,-0,true,false,null],"a":{"x":"y"}}`},
		{"no HTML escaping", `{"html":"<b>&amp;</b>"}`, `{"html":"<b>&amp;</b>"}`},
		{"escapes decoded", `{"e":"\u00e9\/\t"}`, `{"e":"é/\t"}`},
		{"multibyte text kept", `{"名前":"ポケモンカード 🃏"}`, `{"名前":"ポケモンカード 🃏"}`},
		{"escaped lone surrogate becomes U+FFFD", `{"s":"\ud800x"}`, "{\"s\":\"\uFFFDx\"}"},
		{"control characters stay escaped", `{"c":"a\u0001b"}`, `{"c":"a\u0001b"}`},
		{"depth at the limit", nested(ai.MaxResultDepth), nested(ai.MaxResultDepth)},
		{"arrays count toward depth too", `{"a":` + strings.Repeat("[", ai.MaxResultDepth-1) + strings.Repeat("]", ai.MaxResultDepth-1) + `}`,
			`{"a":` + strings.Repeat("[", ai.MaxResultDepth-1) + strings.Repeat("]", ai.MaxResultDepth-1) + `}`},
		{"empty object", `{}`, `{}`},
		{"empty error members are no envelope", `{"error":null,"errors":[],"status":"ok","success":true,"label":"card"}`,
			`{"error":null,"errors":[],"status":"ok","success":true,"label":"card"}`},
		{"false and empty error members", `{"error":false,"errors":{},"message":""}`, `{"error":false,"errors":{},"message":""}`},
		{"an error below the top level is data", `{"result":{"error":"glare"},"checks":[{"status":"failed"}]}`,
			`{"result":{"error":"glare"},"checks":[{"status":"failed"}]}`},
		{"same key in different objects", `{"a":{"a":1},"b":{"a":2}}`, `{"a":{"a":1},"b":{"a":2}}`},
		{"large but finite number", `{"n":1.7976931348623157e308,"m":123456789012345678901234567890}`,
			`{"n":1.7976931348623157e308,"m":123456789012345678901234567890}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			out, err := ai.ParseResponse([]byte(tc.body))
			if err != nil {
				t.Fatalf("ParseResponse(%q): %v", tc.body, err)
			}
			if string(out) != tc.want {
				t.Errorf("ParseResponse(%q) = %q, want %q", tc.body, out, tc.want)
			}
			checkAccepted(t, out)
		})
	}
}

func TestParseResponseRefuses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, body    string
		wantCode      string // default ai_bad_response
		wantInMessage string
	}{
		// Defect: json.Valid does not check UTF-8, so these were stored.
		{name: "invalid UTF-8 in a string", body: "{\"label\":\"card\xff\"}", wantInMessage: "not valid UTF-8"},
		{name: "invalid UTF-8 in a key", body: "{\"\xc3\x28\":1}", wantInMessage: "not valid UTF-8"},
		{name: "overlong encoding", body: "{\"a\":\"\xc0\xaf\"}", wantInMessage: "not valid UTF-8"},
		{name: "UTF-8-encoded surrogate", body: "{\"a\":\"\xed\xa0\x80\"}", wantInMessage: "not valid UTF-8"},
		{name: "truncated rune at the end of a string", body: "{\"a\":\"\xe2\x82\"}", wantInMessage: "not valid UTF-8"},
		// Defect: SQLite's json_valid refuses what Go accepts.
		{name: "1500-deep object", body: nested(1500), wantInMessage: "deeper than 32"},
		{name: "one level too deep", body: nested(ai.MaxResultDepth + 1), wantInMessage: "deeper than 32"},
		{name: "arrays one level too deep", body: `{"a":` + strings.Repeat("[", ai.MaxResultDepth) + strings.Repeat("]", ai.MaxResultDepth) + `}`, wantInMessage: "deeper than 32"},
		// Defect: a 200 error envelope was a draft.
		{name: "error string", body: `{"error":"model overloaded"}`, wantInMessage: `error report: "error":"model overloaded"`},
		{name: "error object", body: `{"error":{"code":500,"message":"CUDA out of memory"}}`, wantInMessage: "CUDA out of memory"},
		{name: "error true", body: `{"label":"card","error":true}`, wantInMessage: "error report"},
		{name: "errors list", body: `{"errors":["bad image"]}`, wantInMessage: "bad image"},
		{name: "status error", body: `{"status":"ERROR","detail":"x"}`, wantInMessage: "error report"},
		{name: "status failed", body: `{"status":"failed"}`, wantInMessage: "error report"},
		{name: "status failure", body: `{"status":"Failure"}`, wantInMessage: "error report"},
		{name: "success false", body: `{"success":false,"message":"no card found"}`, wantInMessage: "error report"},
		// What no store or client should have to hold.
		{name: "NUL in a string", body: `{"a":"x\u0000y"}`, wantInMessage: "NUL"},
		{name: "NUL in a key", body: `{"\u0000":1}`, wantInMessage: "NUL"},
		{name: "repeated key", body: `{"label":"card","label":"coin"}`, wantInMessage: `repeats the key "label"`},
		{name: "repeated key deep down", body: `{"a":[{"b":1,"b":2}]}`, wantInMessage: "repeats the key"},
		{name: "number out of range", body: `{"n":1e400}`, wantInMessage: "out of range"},
		{name: "negative number out of range", body: `{"n":[-1e999]}`, wantInMessage: "out of range"},
		// Not one JSON object.
		{name: "empty body", body: ``, wantInMessage: "not valid JSON (0 bytes)"},
		{name: "whitespace", body: " \n", wantInMessage: "not valid JSON"},
		{name: "cut off", body: `{"labels": ["ca`, wantInMessage: "not valid JSON"},
		{name: "byte order mark", body: "\xef\xbb\xbf{}", wantInMessage: "not valid JSON"},
		{name: "array", body: `[{"label":"card"}]`, wantInMessage: "JSON array; expected an object"},
		{name: "string", body: `"card"`, wantInMessage: "JSON string"},
		{name: "number", body: `42`, wantInMessage: "JSON number"},
		{name: "boolean", body: `true`, wantInMessage: "JSON boolean"},
		{name: "null", body: `null`, wantInMessage: "JSON null"},
		{name: "two objects", body: `{}{}`, wantInMessage: "data after its JSON object"},
		{name: "trailing garbage", body: `{"a":1} x`, wantInMessage: "data after its JSON object"},
		{name: "trailing comma", body: `{"a":1,}`, wantInMessage: "not valid JSON"},
		{name: "single quotes", body: `{'a':1}`, wantInMessage: "not valid JSON"},
		{name: "raw control character", body: "{\"a\":\"x\ty\"}", wantInMessage: "not valid JSON"},
		// Size, before and after re-encoding.
		{name: "over the cap", body: `{"pad":"` + strings.Repeat("x", ai.MaxResultBytes) + `"}`, wantCode: ai.CodeResponseTooLarge},
		{name: "over the cap once re-escaped", body: `{"pad":"` + strings.Repeat("\u2028", 15000) + `"}`, wantCode: ai.CodeResponseTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			out, err := ai.ParseResponse([]byte(tc.body))
			if err == nil {
				t.Fatalf("ParseResponse accepted %q as %q", tc.body, out)
			}
			want := tc.wantCode
			if want == "" {
				want = ai.CodeBadResponse
			}
			if ai.Code(err) != want || !ai.IsPermanent(err) {
				t.Errorf("Code, IsPermanent = %q, %v; want %q, true (err: %v)", ai.Code(err), ai.IsPermanent(err), want, err)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.wantInMessage) {
				t.Errorf("message %q does not mention %q", msg, tc.wantInMessage)
			}
			if !utf8.ValidString(msg) || strings.ContainsRune(msg, 0) || len(msg) > 400 {
				t.Errorf("message is not short printable UTF-8: %q", msg)
			}
			if ai.UserMessage(err) != msg {
				t.Errorf("UserMessage = %q, want the message %q", ai.UserMessage(err), msg)
			}
		})
	}
}
