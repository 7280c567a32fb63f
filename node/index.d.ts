/// <reference types="node" />
import type { Agent } from 'node:http';
import type { Writable } from 'node:stream';

/** The `sssrd` key of the event sssrd invokes the function with. */
export interface SssrdMeta {
  version: number;
  callbackUrl: string;
  token: string;
  deadlineMs: number;
}

/** Any event sssrd sends: a Function URL event (payload 2.0) plus `sssrd`. */
export interface SssrdEvent {
  sssrd: SssrdMeta;
  [key: string]: unknown;
}

export interface ResponseInit {
  /** 200-599; default 200. */
  statusCode?: number;
  /** Latin-1 strings, or lists of them (sent as repeated headers). */
  headers?: Record<string, string | string[]>;
  /** Set-Cookie values. */
  cookies?: string[];
}

export interface CallbackOptions {
  /** Limit for connecting and for sssrd's final answer, in ms; default 30000. */
  timeoutMs?: number;
  /** An agent of your own; default a shared keep-alive agent. */
  agent?: Agent;
}

/** sssrd's answer once the body was delivered. */
export interface Summary {
  requestId: string;
  bytes: number;
}

export const PRELUDE_CONTENT_TYPE: 'application/vnd.awslambda.http-integration-response';
export const RENDER_ERROR_CONTENT_TYPE: 'application/vnd.sssrd.render-error+json';

/** The callback to sssrd failed. */
export class CallbackError extends Error {}

/** sssrd ended the stream (the viewer left, or the request is already over): stop rendering. */
export class ViewerGone extends CallbackError {}

/** sssrd answered the callback with an error status (401 bad token, 409 taken, ...). */
export class CallbackRejected extends CallbackError {
  constructor(message: string, status: number, body: Buffer);
  readonly status: number;
  readonly body: Buffer;
}

/**
 * One POST to sssrd's callback URL; each write() is one chunk, sent at once. 'finish' comes
 * after sssrd confirmed delivery; destroy() before the end truncates the viewer's response.
 */
export class CallbackStream extends Writable {
  constructor(event: SssrdEvent, options?: CallbackOptions & { contentType?: string });
  /** Aborts, with the ViewerGone or CallbackRejected error as its reason, when sssrd ends the stream. */
  readonly signal: AbortSignal;
  /** sssrd's answer, once the body was delivered. */
  readonly summary: Summary | null;
  /** Only before the first write. */
  setContentType(contentType: string): void;
  /** Status, headers and cookies in AWS's prelude format, sent with the first write; only before it. */
  setPrelude(init: ResponseInit): void;
  /** Whether any of the response has been sent (after that an error can only cut it). */
  readonly started: boolean;
  /** Opens the callback at once (otherwise the first write does). */
  open(): this;
}

/**
 * The body's stream; the prelude goes out with the first write (or end). destroy(error) before
 * the first write reports the error to sssrd: the viewer gets 502 at once.
 */
export function streamResponse(
  event: SssrdEvent,
  init?: ResponseInit,
  options?: CallbackOptions,
): CallbackStream;

/**
 * Runs render(out) and owns the ending: a return ends the body and resolves to sssrd's summary;
 * a throw is reported (before the first write: 502 at once) or cuts the stream, then rethrown;
 * the viewer leaving resolves to null.
 */
export function withStream(
  event: SssrdEvent,
  init: ResponseInit,
  render: (out: CallbackStream) => unknown,
  options?: CallbackOptions,
): Promise<Summary | null>;

/** sssrd's answer to an error report. */
export interface ErrorReported {
  requestId: string;
  reported: true;
}

/** Tells sssrd the render failed before sending anything (the viewer gets 502 at once). */
export function reportError(
  event: SssrdEvent,
  error: unknown,
  options?: CallbackOptions,
): Promise<ErrorReported>;

/** Sends a whole response in one request (Content-Length). */
export function respond(
  event: SssrdEvent,
  body: string | Uint8Array,
  init?: ResponseInit,
  options?: CallbackOptions,
): Promise<Summary>;

/** Lambda's own HttpResponseStream, for a stream that goes to sssrd. */
export class HttpResponseStream {
  static from(responseStream: CallbackStream, init: ResponseInit): CallbackStream;
}

export type StreamingHandler<E = SssrdEvent, C = unknown> = (
  event: E,
  responseStream: CallbackStream,
  context: C,
) => unknown;

/** Turns a Function URL streaming handler into the plain async handler sssrd invokes. */
export function streamifyResponse<E extends SssrdEvent, C>(
  handler: StreamingHandler<E, C>,
): (event: E, context: C) => Promise<Summary | null>;

export const awslambda: {
  streamifyResponse: typeof streamifyResponse;
  HttpResponseStream: typeof HttpResponseStream;
};
