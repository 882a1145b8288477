// Package ai analyses one stored image, either through the external AI service
// (Client) or with the pure-Go built-in analyzer (Builtin), behind one
// interface, Analyzer, that the background worker calls once per job attempt.
//
// # Result
//
// A successful Analyze returns a JSON object of at most MaxResultBytes bytes,
// nested at most MaxResultDepth deep, valid UTF-8 with no NUL character,
// re-encoded canonically by ParseResponse; the worker checks it again with
// ParseResponse (whatever the Analyzer) and stores it as the asset's
// aiMetadata. Nothing else is a success: an empty body, a JSON array, a
// truncated object or an error envelope such as {"error": …} is an error.
//
// # Errors
//
// Every error carries a stable code (Code) that the worker copies into the
// asset's error.code, and its Error() text is written for the person who
// uploaded the image: it never contains the service token, image bytes, or
// more than a short snippet of what the AI service answered. UserMessage
// gives the text to store and show. The underlying cause stays reachable
// through errors.Is and errors.As.
//
// Errors are retryable unless IsPermanent reports true. The worker fails a job
// at once on a permanent error and retries the rest with backoff, waiting at
// least RetryAfter when the service asked for a delay. The classification,
// following DESIGN.md §4–§5:
//
//	AI service 408, 5xx, timeouts, connection errors  retryable (ai_timeout, ai_unavailable)
//	AI service 429                                    retryable (ai_rate_limited), Retry-After honoured
//	AI service 503 with Retry-After                   retryable (ai_unavailable), Retry-After honoured
//	AI service other 4xx                              permanent (ai_rejected)
//	AI service 200, body over MaxResultBytes          permanent (ai_response_too_large)
//	AI service 200, body cut off mid-read             retryable (ai_unavailable)
//	AI service 200, any body ParseResponse refuses    permanent (ai_bad_response): invalid JSON or UTF-8,
//	                                                  not an object, too deep, NUL, an error envelope
//	AI service 1xx, 3xx, 2xx other than 200           permanent (ai_bad_response): a misconfigured URL
//	image bytes whose pixels cannot be decoded        permanent (image_undecodable)
//	image in a format the analyzer cannot read        permanent (image_unsupported)
//	image over the configured pixel or byte limit     permanent (image_too_large)
//	reading the stored image failed                   retryable (image_unreadable)
//	ctx ended by the caller                           retryable (ai_canceled, or ai_timeout for a deadline)
//
// Retry-After is read as delta-seconds (digits only) or an HTTP date, and capped at
// MaxRetryAfter so that a confused service cannot park a job for hours.
//
// # Circuit breaker
//
// Breaker wraps the Client (one per worker process): after
// BreakerConfig.Threshold outage failures in a row, or one 429/503 with
// Retry-After, it stops sending and returns *OpenError, on which the worker
// snoozes the job without counting an attempt; it probes the service once
// per ProbeInterval and closes on the first answer. Permanent errors pass
// through and never open it. State and BreakerCollector expose it.
//
// # The two analyzers
//
// Client streams the stored bytes to the AI service as multipart/form-data
// (fields assetId, then image), with Content-Length when Image.Size is known;
// memory per request is constant whatever the image size.
//
// Builtin, the default when no AI service is configured, decodes JPEG, PNG and
// WebP in pure Go and reports measured facts (see Builtin for the fields and
// the verdict thresholds); for HEIC/HEIF, which Go cannot decode, it reports
// only what the header says. A full-size decode costs about 4 bytes a pixel
// (~200 MB at 50 MP), so at most BuiltinConfig.MaxConcurrentDecodes run at
// once (GOMAXPROCS by default) however many jobs the worker runs; the rest
// wait for a slot, honouring their ctx.
package ai
