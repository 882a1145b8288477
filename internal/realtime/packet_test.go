package realtime

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// TestParseSIORefuses: every field of a client's packet is checked before
// use or echo.
func TestParseSIORefuses(t *testing.T) {
	t.Parallel()
	for name, pkt := range map[string]string{
		"empty":                    "",
		"invalid UTF-8 in data":    "2[\"e\",\"\xff\"]",
		"invalid UTF-8 in name":    "2[\"\xc3\x28\"]",
		"invalid UTF-8 in nsp":     "0/\xff,{}",
		"unknown type":             "9",
		"binary event":             `51-["e",{"_placeholder":true,"num":0}]`,
		"binary ack":               `61-1[{"_placeholder":true,"num":0}]`,
		"binary, huge count":       `599999999999999999999-["e"]`,
		"namespace too long":       "0/" + strings.Repeat("a", maxNamespace) + ",{}",
		"namespace with \\x1e":     "0/a\x1e42[\"e\"],{}",
		"namespace with a space":   "0/a b,{}",
		"namespace with a control": "0/a\x00,{}",
		"namespace non-ASCII":      "0/é,{}",
		"ack id out of range":      "399999999999999999999[]",
		"data not JSON":            `2["e"`,
		"CONNECT with an array":    `0["token"]`,
		"CONNECT with a string":    `0"token"`,
		"DISCONNECT with data":     `1{}`,
		"EVENT not an array":       `2{"e":1}`,
		"EVENT empty array":        `2[]`,
		"EVENT name not a string":  `2[1]`,
		"EVENT name too long":      `2["` + strings.Repeat("e", maxEvent+1) + `"]`,
		"EVENT with an id only":    `25`,
		"ACK not an array":         `31{}`,
	} {
		if p, err := parseSIO(pkt); err == nil {
			t.Errorf("%s: parseSIO(%q) = %+v, want an error", name, pkt, p)
		}
	}
	if _, err := parseSIO("51-[\"e\"]"); !errors.Is(err, errBinary) {
		t.Errorf("binary packet: %v, want errBinary", err)
	}
	for _, pkt := range []string{"", "x", "4\xff", "b4AQ=="} {
		if _, _, err := parseEIO(pkt); err == nil {
			t.Errorf("parseEIO(%q) accepted", pkt)
		}
	}
}

// TestParseSIOAccepts: what the official clients send parses, and encodes
// back to the same packet.
func TestParseSIOAccepts(t *testing.T) {
	t.Parallel()
	for pkt, want := range map[string]sioPacket{
		`0`:                      {typ: '0', nsp: "/", id: -1},
		`0{"token":"t"}`:         {typ: '0', nsp: "/", id: -1, data: []byte(`{"token":"t"}`)},
		`0/admin,{"token":"t"}`:  {typ: '0', nsp: "/admin", id: -1, data: []byte(`{"token":"t"}`)},
		`1`:                      {typ: '1', nsp: "/", id: -1},
		`2["hello",1,{"a":"é"}]`: {typ: '2', nsp: "/", id: -1, data: []byte(`["hello",1,{"a":"é"}]`), event: "hello"},
		`212["hello"]`:           {typ: '2', nsp: "/", id: 12, data: []byte(`["hello"]`), event: "hello"},
		`2/chat,7["ü"]`:          {typ: '2', nsp: "/chat", id: 7, data: []byte(`["ü"]`), event: "ü"},
		`30[]`:                   {typ: '3', nsp: "/", id: 0, data: []byte(`[]`)},
		`2["` + strings.Repeat("e", maxEvent) + `"]`: {typ: '2', nsp: "/", id: -1,
			data: []byte(`["` + strings.Repeat("e", maxEvent) + `"]`), event: strings.Repeat("e", maxEvent)},
	} {
		p, err := parseSIO(pkt)
		if err != nil {
			t.Errorf("parseSIO(%q): %v", pkt, err)
			continue
		}
		if !reflect.DeepEqual(p, want) {
			t.Errorf("parseSIO(%q) = %+v, want %+v", pkt, p, want)
		}
		if got := p.encode(); got != pkt {
			t.Errorf("encode(parseSIO(%q)) = %q", pkt, got)
		}
	}
}
