from __future__ import annotations

from pydantic import BaseModel, Field


class SegmentOut(BaseModel):
    id: int
    seek: int = Field(description="Where the segment's window started, in 10 ms frames.")
    start: float = Field(description="Seconds from the start of the audio.")
    end: float
    text: str
    tokens: list[int] = Field(description="Token ids (Whisper backends); empty for pocketsphinx.")
    temperature: float = Field(description="Temperature the segment was decoded at.")
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class WordOut(BaseModel):
    word: str
    start: float
    end: float
    probability: float = Field(description="The model's confidence in the word, 0..1.")


class AudioInfo(BaseModel):
    container: str = Field(description="FFmpeg's name of the container, e.g. 'wav', 'ogg', 'mov,mp4,m4a,3gp,3g2,mj2'.")
    codec: str
    sample_rate: int = Field(description="Sample rate of the upload (the models hear it at 16 kHz).")
    channels: int = Field(description="Channels of the upload (mixed down to mono).")
    peak_dbfs: float | None = Field(description="Level of the loudest sample; null for digital silence.")
    silent: bool = Field(description="Below the silence level: answered with an empty transcript, no model run.")


class Timings(BaseModel):
    decode_ms: float = Field(description="Time to read and decode the upload.")
    inference_ms: float = Field(description="Time waiting for a batch and running it.")


class TranscriptionResponse(BaseModel):
    object: str = "audio.transcription"
    model: str
    task: str = Field(description="transcribe or translate.")
    text: str
    language: str | None = Field(description="ISO-639-1 code: the one asked for, else the one the model found.")
    duration: float = Field(description="Seconds of audio.")
    segments: list[SegmentOut]
    words: list[WordOut] | None = Field(None, description="Present when word_timestamps was asked for.")
    audio: AudioInfo
    timings: Timings
