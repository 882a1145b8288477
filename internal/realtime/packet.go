package realtime

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Engine.IO v4 packet types, the first character of every text packet.
const (
	eioOpen    = '0'
	eioClose   = '1'
	eioPing    = '2'
	eioPong    = '3'
	eioMessage = '4'
	eioUpgrade = '5'
	eioNoop    = '6'
)

// Socket.IO v5 packet types, the first character of an Engine.IO message.
const (
	sioConnect      = '0'
	sioDisconnect   = '1'
	sioEvent        = '2'
	sioAck          = '3'
	sioConnectError = '4'
	sioBinaryEvent  = '5'
	sioBinaryAck    = '6'
)

// recordSeparator joins packets in one long-polling HTTP body.
const recordSeparator = "\x1e"

// errBinary is returned for binary packets, which this server does not take:
// the contract has no client-to-server payloads, let alone binary ones.
var errBinary = errors.New("binary packets are not supported")

// Bounds on what a client's packet may hold besides its JSON data (which
// MaxPayload bounds): namespaces and event names are echoed in replies and
// logs, so they are short, printable text.
const (
	maxNamespace = 128
	maxEvent     = 256
)

// parseEIO splits an Engine.IO text packet into its type and payload. It
// refuses text that is not valid UTF-8 (a websocket text frame or polling
// body must be), binary packets and unknown types.
func parseEIO(s string) (typ byte, payload string, err error) {
	if s == "" {
		return 0, "", errors.New("empty packet")
	}
	if !utf8.ValidString(s) {
		return 0, "", errors.New("packet is not valid UTF-8")
	}
	switch s[0] {
	case eioOpen, eioClose, eioPing, eioPong, eioMessage, eioUpgrade, eioNoop:
		return s[0], s[1:], nil
	case 'b':
		return 0, "", errBinary
	}
	return 0, "", fmt.Errorf("unknown engine.io packet type %q", s[0])
}

// sioPacket is a decoded Socket.IO packet.
type sioPacket struct {
	typ   byte
	nsp   string
	id    int64 // ack id; -1 when absent
	data  json.RawMessage
	event string // EVENT: the event name, data[0]
}

// parseSIO decodes the payload of an Engine.IO message packet,
// <type>[<nsp>,][<ack id>][<JSON>], and checks every field before anything
// uses or echoes it: valid UTF-8; a namespace of at most maxNamespace
// printable ASCII characters; an ack id that fits int64; JSON data of the
// shape the type requires (CONNECT: an object or nothing; DISCONNECT:
// nothing; EVENT: an array whose first element is an event name of at
// most maxEvent bytes; ACK: an array). Binary packets, which carry
// attachments, are refused whatever their attachment count.
func parseSIO(s string) (sioPacket, error) {
	p := sioPacket{nsp: "/", id: -1}
	if s == "" {
		return p, errors.New("empty socket.io packet")
	}
	if !utf8.ValidString(s) {
		return p, errors.New("socket.io packet is not valid UTF-8")
	}
	p.typ = s[0]
	switch p.typ {
	case sioConnect, sioDisconnect, sioEvent, sioAck, sioConnectError:
	case sioBinaryEvent, sioBinaryAck:
		return p, errBinary
	default:
		return p, fmt.Errorf("unknown socket.io packet type %q", p.typ)
	}
	s = s[1:]
	if strings.HasPrefix(s, "/") {
		nsp, rest, ok := strings.Cut(s, ",")
		if !ok {
			nsp, rest = s, ""
		}
		if err := checkNamespace(nsp); err != nil {
			return p, err
		}
		p.nsp, s = nsp, rest
	}
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i > 0 {
		id, err := strconv.ParseInt(s[:i], 10, 64)
		if err != nil {
			return p, errors.New("bad ack id: out of range")
		}
		p.id, s = id, s[i:]
	}
	if s != "" {
		if !json.Valid([]byte(s)) {
			return p, errors.New("socket.io packet data is not valid JSON")
		}
		p.data = json.RawMessage(s)
	}
	return p, p.checkData()
}

func checkNamespace(nsp string) error {
	if len(nsp) > maxNamespace {
		return fmt.Errorf("namespace longer than %d bytes", maxNamespace)
	}
	for i := 0; i < len(nsp); i++ {
		if c := nsp[i]; c <= ' ' || c >= 0x7f {
			return errors.New("namespace holds a character other than printable ASCII")
		}
	}
	return nil
}

// checkData checks that the data has the shape p's type requires and sets
// p.event.
func (p *sioPacket) checkData() error {
	kind := byte(0) // first byte of the JSON value, 0 when absent
	if t := bytes.TrimLeft(p.data, " \t\r\n"); len(t) > 0 {
		kind = t[0]
	}
	switch p.typ {
	case sioConnect:
		if kind != 0 && kind != '{' {
			return errors.New("CONNECT data is not an object")
		}
	case sioDisconnect:
		if kind != 0 {
			return errors.New("DISCONNECT carries data")
		}
	case sioAck:
		if kind != '[' {
			return errors.New("ACK data is not an array")
		}
	case sioEvent:
		var args []json.RawMessage
		if kind != '[' || json.Unmarshal(p.data, &args) != nil || len(args) == 0 {
			return errors.New("event payload is not a non-empty array")
		}
		if json.Unmarshal(args[0], &p.event) != nil {
			return errors.New("event name is not a string")
		}
		if len(p.event) > maxEvent {
			return fmt.Errorf("event name longer than %d bytes", maxEvent)
		}
	}
	return nil
}

// encode is the inverse of parseSIO: a packet parseSIO returned encodes to
// text that parses to the same packet.
func (p sioPacket) encode() string {
	var b strings.Builder
	b.Grow(len(p.nsp) + 22 + len(p.data))
	b.WriteByte(p.typ)
	if p.nsp != "/" {
		b.WriteString(p.nsp)
		b.WriteByte(',')
	}
	if p.id >= 0 {
		b.WriteString(strconv.FormatInt(p.id, 10))
	}
	b.Write(p.data)
	return b.String()
}

// encodeSIO encodes a Socket.IO packet for the default namespace as an
// Engine.IO message packet ("4" + Socket.IO packet).
func encodeSIO(typ byte, id int64, data []byte) string {
	return string(eioMessage) + sioPacket{typ: typ, nsp: "/", id: id, data: data}.encode()
}

// encodeEvent encodes EVENT [name, data] (or [name] when data is empty),
// with offset as a last argument unless it is "" (connection state
// recovery: the official clients keep the last one they received).
func encodeEvent(event string, data json.RawMessage, offset string) (string, error) {
	name, err := json.Marshal(event)
	if err != nil {
		return "", fmt.Errorf("encode event name: %w", err)
	}
	var b strings.Builder
	b.Grow(4 + len(name) + len(data))
	b.WriteString("42[")
	b.Write(name)
	if len(data) > 0 {
		b.WriteByte(',')
		b.Write(data)
	}
	if offset != "" {
		off, err := json.Marshal(offset)
		if err != nil {
			return "", fmt.Errorf("encode offset: %w", err)
		}
		b.WriteByte(',')
		b.Write(off)
	}
	b.WriteByte(']')
	return b.String(), nil
}

// connectError encodes CONNECT_ERROR for namespace nsp, which parseSIO has
// checked. The official clients surface message as the connect_error's
// Error.message and data as err.data.
func connectError(nsp, message string, data any) string {
	body := struct {
		Message string `json:"message"`
		Data    any    `json:"data,omitempty"`
	}{message, data}
	b, _ := json.Marshal(body) // plain strings and our own small structs
	return string(eioMessage) + sioPacket{typ: sioConnectError, nsp: nsp, id: -1, data: b}.encode()
}

// handshake is the JSON of the Engine.IO open packet.
type handshake struct {
	SID          string   `json:"sid"`
	Upgrades     []string `json:"upgrades"`
	PingInterval int64    `json:"pingInterval"`
	PingTimeout  int64    `json:"pingTimeout"`
	MaxPayload   int64    `json:"maxPayload"`
}
