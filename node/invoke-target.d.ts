/// <reference types="node" />
import { EventEmitter } from 'node:events';

export type Handler = (event: any, context: LambdaContext) => unknown;

export interface LambdaContext {
  awsRequestId: string;
  functionName: string;
  functionVersion: string;
  invokedFunctionArn: string;
  memoryLimitInMB: string;
  logGroupName: string;
  callbackWaitsForEmptyEventLoop: boolean;
  getRemainingTimeInMillis(): number;
}

/** A local Lambda Invoke API (Event invocations) running `handler` in this process. */
export class InvokeTarget extends EventEmitter {
  constructor(handler: Handler, options?: { timeoutMs?: number });
  /** Resolves to the endpoint URL to give sssrd as --endpoint-url. */
  listen(port?: number, host?: string): Promise<string>;
  readonly endpointUrl: string;
  close(): Promise<void>;
  on(event: 'invoked', listener: (invocation: { requestId: string; functionName: string; event: any }) => void): this;
  on(event: 'settled', listener: (outcome: { requestId: string; result?: unknown; error?: unknown }) => void): this;
}

/** "file.mjs:export", resolved against the working directory. */
export function loadHandler(reference: string): Promise<Handler>;
