package realtime

import (
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzDecodePacket feeds the Engine.IO/Socket.IO decoder what a client can
// send (a websocket text frame, or a polling body of packets separated by
// \x1e). Invariants: no panic; a packet is either refused with an error or
// decoded into fields that are valid UTF-8, within their bounds and no
// larger than the input, and that encode to text which decodes to the same
// packet.
func FuzzDecodePacket(f *testing.F) {
	for _, seed := range []string{
		// Frames the official socket.io-client 4.8 sends, and a few that
		// a hostile client sent.
		`40{"token":"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2ln"}`,
		`40`, `41`, `3`, `2probe`, `5`, `6`, `1`,
		`421["hello",{"a":1}]`, `42["x"]`, `431[{"error":null}]`,
		"3\x1e421[\"hello\"]",
		`40/admin,{"token":"x"}`, `42/chat,5["m"]`,
		`451-["x",{"_placeholder":true,"num":0}]`,
		`4` + "4" + `{"message":"x"}`,
		"42[\"\xff\"]", `4299999999999999999999["x"]`, `42[[[[[[[[[[]]]]]]]]]]`,
		`4/` + strings.Repeat("a", 200) + `,{}`,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, body string) {
		for _, frame := range strings.Split(body, recordSeparator) {
			typ, payload, err := parseEIO(frame)
			if err != nil {
				continue
			}
			if string(typ)+payload != frame {
				t.Fatalf("parseEIO(%q) = %q, %q: not the frame", frame, typ, payload)
			}
			if typ != eioMessage {
				continue
			}
			p, err := parseSIO(payload)
			if err != nil {
				continue
			}
			if !utf8.ValidString(p.nsp) || !strings.HasPrefix(p.nsp, "/") || len(p.nsp) > maxNamespace ||
				strings.ContainsAny(p.nsp, ",\x1e") {
				t.Fatalf("parseSIO(%q): namespace %q out of bounds", payload, p.nsp)
			}
			if len(p.data) > len(payload) || !utf8.Valid(p.data) {
				t.Fatalf("parseSIO(%q): data %q", payload, p.data)
			}
			if p.typ == sioEvent && (len(p.event) > maxEvent || !utf8.ValidString(p.event)) {
				t.Fatalf("parseSIO(%q): event name %q", payload, p.event)
			}
			enc := p.encode()
			q, err := parseSIO(enc)
			if err != nil {
				t.Fatalf("parseSIO(%q) = %+v encodes to %q, which does not parse: %v", payload, p, enc, err)
			}
			if !reflect.DeepEqual(p, q) {
				t.Fatalf("round trip of %q: %+v, then %q: %+v", payload, p, enc, q)
			}
		}
	})
}
